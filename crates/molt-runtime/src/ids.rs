//! Names derived from an instance id: the runc container id and the hostname.

/// Annotation carrying the owner of a container (checked by `scan` and `adopt`).
pub(crate) const OWNER_ANNOTATION: &str = "dev.molt.owner";
/// Annotation carrying the instance id a container runs (the container id may be sanitized).
pub(crate) const INSTANCE_ANNOTATION: &str = "dev.molt.instance";

/// Longest hostname the kernel accepts.
const HOSTNAME_MAX: usize = 64;

/// The runc container id of instance `instance` of `owner`: `<owner>-<instance>`, both reduced
/// to runc's allowed characters (`[A-Za-z0-9_+.-]`). When sanitizing changed anything, a hash
/// of the original is appended so that two different ids never share a container.
pub(crate) fn container_id(owner: &str, instance: &str) -> String {
    format!("{}{}", owner_prefix(owner), sanitize(instance))
}

/// The prefix every container id of `owner` starts with.
pub(crate) fn owner_prefix(owner: &str) -> String {
    format!("{}-", sanitize(owner))
}

/// The container's hostname: the instance id, cut to what the kernel accepts.
pub(crate) fn hostname(instance: &str) -> String {
    let mut end = instance.len().min(HOSTNAME_MAX);
    while !instance.is_char_boundary(end) {
        end -= 1;
    }
    instance[..end].to_string()
}

/// `raw` with every character runc refuses replaced by `_`, plus a hash of `raw` when that
/// changed anything (or `raw` is empty).
fn sanitize(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == raw && !raw.is_empty() {
        clean
    } else {
        format!("{clean}_{:016x}", fnv1a(raw.as_bytes()))
    }
}

pub(crate) use molt_core::hash::fnv1a;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept() {
        assert_eq!(container_id("molt", "web-1.a_b"), "molt-web-1.a_b");
        assert_eq!(owner_prefix("molt"), "molt-");
    }

    #[test]
    fn odd_ids_are_sanitized_without_collisions() {
        let a = container_id("molt", "web/1");
        let b = container_id("molt", "web:1");
        assert!(a.starts_with("molt-web_1_"), "{a}");
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+.-".contains(c)));
        assert_ne!(container_id("molt", ""), "molt-");
    }

    #[test]
    fn hostname_is_cut_at_64_bytes() {
        assert_eq!(hostname("web-1"), "web-1");
        assert_eq!(hostname(&"é".repeat(40)).len(), 64);
        assert_eq!(hostname(&"a".repeat(100)).len(), 64);
    }
}
