//! molt-swarm: Docker Swarm as an engine molt runs environments on.
//!
//! [`Swarm`] implements [`molt_provider::Engine`] over the Docker Engine API ([`Docker`], on
//! the engine's unix socket): one service per environment, pinned by image digest, on molt's
//! attachable overlay network; and the fleet of routers as a global service
//! ([`Swarm::ensure_routers`]). molt never schedules: Swarm places and restarts tasks, molt
//! reads them.

mod docker;
mod model;
mod router_image;
mod secrets;
mod swarm;

pub use docker::{query_escape, Docker, API_VERSION, DEFAULT_SOCKET};
pub use router_image::{write_router_tree, ROUTER_EXECUTABLE};
pub use secrets::LABEL_SECRET;
pub use swarm::{
    service_name, RouterServiceSpec, Swarm, SwarmConfig, LABEL_APP, LABEL_ENV, LABEL_OWNER,
    LABEL_PORT, LABEL_RELEASE, LABEL_ROLE, ROUTER_SERVICE,
};
