//! The arguments of `molt secrets` and `molt tokens`.

use std::path::PathBuf;

use clap::Subcommand;

/// `molt secrets …`.
#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Set a secret from stdin (or --from-file), never from the command line; a new release
    /// is deployed with it. One trailing newline is dropped, except with --as-file.
    Set {
        /// The app.
        app: String,
        /// The secret's name: the environment variable (or file) instances get.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Deliver it as a file, byte for byte (any bytes): /run/secrets/NAME in a container,
        /// $MOLT_SECRETS_DIR/NAME everywhere; 0400, on a tmpfs. Without it: an environment
        /// variable.
        #[arg(long)]
        as_file: bool,
        /// Return once the deployment is recorded.
        #[arg(long)]
        no_wait: bool,
    },
    /// The app's secrets: names, versions, who and when; never values.
    List {
        /// The app.
        app: String,
    },
    /// Remove a secret; a new release without it is deployed.
    Rm {
        /// The app.
        app: String,
        /// The secret's name.
        name: String,
        /// Return once the deployment is recorded.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `molt tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Make a token; its secret is printed once and never again.
    Create {
        /// Its name (the actor of everything done with it).
        name: String,
        /// read (GET only), deploy (deploys and changes of its apps), admin (everything) or
        /// router (a `molt router`).
        #[arg(long)]
        role: String,
        /// Limit it to these apps (comma-separated).
        #[arg(long, value_delimiter = ',')]
        apps: Option<Vec<String>>,
        /// It stops working after this long (e.g. 12h, 30d).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Every token: role, apps, expiry, who made it; never a secret.
    List,
    /// Revoke a token: it stops working at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}
