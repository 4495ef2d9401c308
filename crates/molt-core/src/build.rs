//! `[build]` of `molt.toml`: how an image is baked, parsed into a [`BuildSpec`].
//!
//! Pure: paths are checked lexically (relative sources stay inside the app folder, image paths
//! are absolute without `..`); nothing here looks at the filesystem. Every error names the line
//! and column of the value it is about; unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::{Digest, EnvVarName, InputError};

/// A parsed `[build]` table: a base and the steps applied on top of it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// What the first layer(s) come from.
    pub base: BaseImage,
    /// Each step makes one layer (`copy`, `run`) or changes only the image config.
    pub steps: Vec<BuildStep>,
}

/// The base of a bake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImage {
    /// Nothing: the image holds only what the steps put in it.
    Scratch,
    /// An image already in the store, by digest (`sha256:…`) or `name:tag`.
    Image(ImageRef),
    /// An OCI or Docker image archive, relative to the app folder.
    Archive(String),
    /// A root filesystem (a directory or a plain tar, e.g. made by debootstrap), relative to
    /// the app folder.
    Rootfs(String),
}

/// A reference to a stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// By content.
    Digest(Digest),
    /// By an immutable tag, `name:tag`.
    Tag(String),
}

/// One step of a bake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStep {
    /// Copies a file or a directory's contents from the app folder into the image.
    Copy {
        /// Relative path inside the app folder (`.` is the whole folder).
        src: String,
        /// Absolute path in the image; a trailing `/` (or a directory source) means "into".
        to: String,
        /// Mode of every copied file (default: 0755 if executable, else 0644).
        mode: Option<u32>,
        /// Owner of every copied entry (default: 0:0).
        owner: Option<(u32, u32)>,
    },
    /// Runs a command in a sandbox whose root is the image so far; its changes are a layer.
    Run {
        /// argv, run without a shell.
        argv: Vec<String>,
        /// Whether the command gets a network (default: none).
        network: bool,
    },
    /// Sets environment variables in the image config.
    Env(BTreeMap<EnvVarName, String>),
    /// Sets the working directory (absolute).
    Workdir(String),
    /// Sets the user (`uid`, `uid:gid` or a name).
    User(String),
    /// Sets the default command.
    Cmd(Vec<String>),
    /// Declares the port the app listens on.
    Port(u16),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    base: Option<Spanned<toml::Value>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    copy: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    run: Option<Spanned<Vec<String>>>,
    network: Option<Spanned<bool>>,
    env: Option<Spanned<BTreeMap<Spanned<String>, String>>>,
    workdir: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    cmd: Option<Spanned<Vec<String>>>,
    port: Option<Spanned<i64>>,
}

impl BuildStep {
    /// Whether the step adds a layer (else it only changes the image config).
    pub fn makes_layer(&self) -> bool {
        matches!(self, BuildStep::Copy { .. } | BuildStep::Run { .. })
    }
}

/// The canonical text of a step: part of its cache key and of the image history.
impl fmt::Display for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildStep::Copy {
                src,
                to,
                mode,
                owner,
            } => {
                write!(f, "copy {src:?} to {to:?}")?;
                if let Some(m) = mode {
                    write!(f, " mode {m:04o}")?;
                }
                if let Some((u, g)) = owner {
                    write!(f, " owner {u}:{g}")?;
                }
                Ok(())
            }
            BuildStep::Run { argv, network } => {
                write!(f, "run {argv:?}")?;
                if *network {
                    write!(f, " network")?;
                }
                Ok(())
            }
            BuildStep::Env(vars) => {
                write!(f, "env")?;
                for (k, v) in vars {
                    write!(f, " {}={v:?}", k.as_str())?;
                }
                Ok(())
            }
            BuildStep::Workdir(dir) => write!(f, "workdir {dir:?}"),
            BuildStep::User(user) => write!(f, "user {user:?}"),
            BuildStep::Cmd(argv) => write!(f, "cmd {argv:?}"),
            BuildStep::Port(port) => write!(f, "port {port}"),
        }
    }
}

impl fmt::Display for BaseImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseImage::Scratch => write!(f, "scratch"),
            BaseImage::Image(ImageRef::Digest(d)) => write!(f, "image {d}"),
            BaseImage::Image(ImageRef::Tag(t)) => write!(f, "image {t}"),
            BaseImage::Archive(p) => write!(f, "archive {p:?}"),
            BaseImage::Rootfs(p) => write!(f, "rootfs {p:?}"),
        }
    }
}

/// Turns the raw `[build]` table into a [`BuildSpec`]; `at` makes an error at a byte span.
pub(crate) fn parse_build(
    raw: RawBuild,
    whole: Range<usize>,
    at: &dyn Fn(Range<usize>, String) -> InputError,
) -> Result<BuildSpec, InputError> {
    let base = match raw.base {
        None => {
            return Err(at(
                whole,
                "[build] needs a base: \"scratch\", an image (\"name:tag\" or a digest), \
                 { archive = \"image.tar\" } or { rootfs = \"dir\" }"
                    .to_string(),
            ))
        }
        Some(b) => parse_base(&b, at)?,
    };
    let mut steps = Vec::new();
    for step in raw.steps {
        let span = step.span();
        steps.push(parse_step(step.into_inner(), span, at)?);
    }
    Ok(BuildSpec { base, steps })
}

fn parse_base(
    value: &Spanned<toml::Value>,
    at: &dyn Fn(Range<usize>, String) -> InputError,
) -> Result<BaseImage, InputError> {
    let err = |why: &str| at(value.span(), format!("base: {why}"));
    match value.get_ref() {
        toml::Value::String(s) if s == "scratch" => Ok(BaseImage::Scratch),
        toml::Value::String(s) if s.starts_with("sha256:") => s
            .parse::<Digest>()
            .map(|d| BaseImage::Image(ImageRef::Digest(d)))
            .map_err(|e| err(&e.to_string())),
        toml::Value::String(s) => {
            check_tag(s).map_err(|why| err(&why))?;
            Ok(BaseImage::Image(ImageRef::Tag(s.clone())))
        }
        toml::Value::Table(t) if t.len() == 1 => {
            let (key, v) = t.iter().next().expect("one entry");
            let Some(path) = v.as_str() else {
                return Err(err(&format!("{key} takes a path string")));
            };
            check_source_path(path).map_err(|why| err(&why))?;
            match key.as_str() {
                "archive" => Ok(BaseImage::Archive(path.to_string())),
                "rootfs" => Ok(BaseImage::Rootfs(path.to_string())),
                other => Err(err(&format!(
                    "unknown key '{other}': use {{ archive = \"image.tar\" }} or {{ rootfs = \"dir\" }}"
                ))),
            }
        }
        _ => Err(err(
            "use \"scratch\", \"name:tag\", a sha256 digest, { archive = \"image.tar\" } \
             or { rootfs = \"dir\" }",
        )),
    }
}

fn parse_step(
    raw: RawStep,
    span: Range<usize>,
    at: &dyn Fn(Range<usize>, String) -> InputError,
) -> Result<BuildStep, InputError> {
    let kinds: Vec<&str> = [
        ("copy", raw.copy.is_some()),
        ("run", raw.run.is_some()),
        ("env", raw.env.is_some()),
        ("workdir", raw.workdir.is_some()),
        ("user", raw.user.is_some()),
        ("cmd", raw.cmd.is_some()),
        ("port", raw.port.is_some()),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(kind, _)| kind)
    .collect();
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => {
            return Err(at(
                span,
                "a step needs one of copy, run, env, workdir, user, cmd or port".to_string(),
            ))
        }
        many => {
            return Err(at(
                span,
                format!("a step does one thing, this one has {}", many.join(" and ")),
            ))
        }
    };
    // Options that belong to another kind of step.
    let stray = [
        ("to", raw.to.as_ref().map(Spanned::span), "copy"),
        ("mode", raw.mode.as_ref().map(Spanned::span), "copy"),
        ("owner", raw.owner.as_ref().map(Spanned::span), "copy"),
        ("network", raw.network.as_ref().map(Spanned::span), "run"),
    ];
    for (key, key_span, owner) in stray {
        if let Some(s) = key_span {
            if owner != kind {
                return Err(at(s, format!("'{key}' belongs to a {owner} step")));
            }
        }
    }
    match kind {
        "copy" => {
            let src = raw.copy.expect("kind copy");
            check_source_path(src.get_ref()).map_err(|why| at(src.span(), why))?;
            let to = raw
                .to
                .ok_or_else(|| at(span.clone(), "a copy step needs to = \"/path\"".to_string()))?;
            check_image_path(to.get_ref()).map_err(|why| at(to.span(), why))?;
            let mode = match raw.mode {
                Some(m) => Some(parse_mode(m.get_ref()).map_err(|why| at(m.span(), why))?),
                None => None,
            };
            let owner = match raw.owner {
                Some(o) => Some(parse_owner(o.get_ref()).map_err(|why| at(o.span(), why))?),
                None => None,
            };
            Ok(BuildStep::Copy {
                src: src.into_inner(),
                to: to.into_inner(),
                mode,
                owner,
            })
        }
        "run" => {
            let argv = raw.run.expect("kind run");
            check_argv(argv.get_ref()).map_err(|why| at(argv.span(), format!("run: {why}")))?;
            Ok(BuildStep::Run {
                argv: argv.into_inner(),
                network: raw.network.map(Spanned::into_inner).unwrap_or(false),
            })
        }
        "env" => {
            let mut vars = BTreeMap::new();
            for (k, v) in raw.env.expect("kind env").into_inner() {
                let name: EnvVarName = k
                    .get_ref()
                    .parse()
                    .map_err(|e: InputError| at(k.span(), e.to_string()))?;
                vars.insert(name, v);
            }
            Ok(BuildStep::Env(vars))
        }
        "workdir" => {
            let dir = raw.workdir.expect("kind workdir");
            check_image_path(dir.get_ref()).map_err(|why| at(dir.span(), why))?;
            Ok(BuildStep::Workdir(dir.into_inner()))
        }
        "user" => {
            let user = raw.user.expect("kind user");
            let ok = !user.get_ref().is_empty()
                && user
                    .get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
            if !ok {
                return Err(at(
                    user.span(),
                    "user is a uid, uid:gid or a name (letters, digits, _ - .)".to_string(),
                ));
            }
            Ok(BuildStep::User(user.into_inner()))
        }
        "cmd" => {
            let argv = raw.cmd.expect("kind cmd");
            check_argv(argv.get_ref()).map_err(|why| at(argv.span(), format!("cmd: {why}")))?;
            Ok(BuildStep::Cmd(argv.into_inner()))
        }
        _ => {
            let port = raw.port.expect("kind port");
            match u16::try_from(*port.get_ref()) {
                Ok(p) if p > 0 => Ok(BuildStep::Port(p)),
                _ => Err(at(
                    port.span(),
                    "port must be between 1 and 65535".to_string(),
                )),
            }
        }
    }
}

/// A path inside the app folder: relative, without `..`, not empty.
fn check_source_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty: use \".\" for the whole app folder".to_string());
    }
    if path.starts_with('/') {
        return Err(format!(
            "'{path}' is absolute: sources are relative to the app folder (it is the build \
             context that is uploaded)"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("'{path}' leaves the app folder ('..')"));
    }
    if path.contains('\0') {
        return Err("paths cannot contain NUL".to_string());
    }
    Ok(())
}

/// A path in the image: absolute, without `..`.
fn check_image_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("'{path}' must be an absolute path in the image"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!("'{path}' must not contain '..'"));
    }
    if path.contains('\0') {
        return Err("paths cannot contain NUL".to_string());
    }
    Ok(())
}

fn check_argv(argv: &[String]) -> Result<(), String> {
    match argv.first() {
        Some(program) if !program.trim().is_empty() => Ok(()),
        _ => Err("give the program and its arguments, e.g. [\"/bin/sh\", \"-c\", \"…\"]".into()),
    }
}

/// `"0755"`-style octal permissions.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "mode '{text}' is not octal permissions such as \"0755\""
        )),
    }
}

/// `"uid"` or `"uid:gid"`, numeric.
fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let bad =
        || format!("owner '{text}' must be numeric \"uid\" or \"uid:gid\", e.g. \"1000:1000\"");
    let (u, g) = text.split_once(':').unwrap_or((text, text));
    let uid = u.parse::<u32>().map_err(|_| bad())?;
    let gid = g.parse::<u32>().map_err(|_| bad())?;
    Ok((uid, gid))
}

/// `name:tag` with a lowercase name and a non-empty tag.
fn check_tag(text: &str) -> Result<(), String> {
    let Some((name, tag)) = text.rsplit_once(':') else {
        return Err(format!("'{text}' is not \"scratch\", a digest or name:tag"));
    };
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./".contains(c));
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name_ok && tag_ok {
        Ok(())
    } else {
        Err(format!(
            "'{text}' is not name:tag (lowercase name; tag of letters, digits, - _ .)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::Manifest;
    use proptest::prelude::*;

    use super::*;

    fn build(table: &str) -> Result<BuildSpec, InputError> {
        let text = format!("name = \"a\"\ncommand = [\"x\"]\n[build]\n{table}");
        Manifest::parse(&text, "molt.toml").map(|m| m.build.expect("has [build]"))
    }

    #[test]
    fn parses_every_kind_of_step() {
        let spec = build(
            r#"base = "scratch"
steps = [
  { copy = "target/server", to = "/bin/server", mode = "0755", owner = "1000:1000" },
  { run = ["/bin/sh", "-c", "echo hi"], network = true },
  { env = { RUST_LOG = "info" } },
  { workdir = "/app" },
  { user = "1000" },
  { cmd = ["/bin/server"] },
  { port = 8080 },
]
"#,
        )
        .unwrap();
        assert_eq!(spec.base, BaseImage::Scratch);
        assert_eq!(spec.steps.len(), 7);
        assert_eq!(
            spec.steps[0],
            BuildStep::Copy {
                src: "target/server".into(),
                to: "/bin/server".into(),
                mode: Some(0o755),
                owner: Some((1000, 1000)),
            }
        );
        assert_eq!(
            spec.steps[1].to_string(),
            r#"run ["/bin/sh", "-c", "echo hi"] network"#
        );
        assert_eq!(spec.steps[6], BuildStep::Port(8080));
        assert!(spec.steps[0].makes_layer() && !spec.steps[2].makes_layer());
    }

    #[test]
    fn parses_every_kind_of_base() {
        let base = |b: &str| build(&format!("base = {b}\n")).map(|s| s.base);
        assert_eq!(
            base("\"shop:1\"").unwrap(),
            BaseImage::Image(ImageRef::Tag("shop:1".into()))
        );
        let digest = format!("\"sha256:{}\"", "a".repeat(64));
        assert!(matches!(
            base(&digest).unwrap(),
            BaseImage::Image(ImageRef::Digest(_))
        ));
        assert_eq!(
            base("{ archive = \"base.tar\" }").unwrap(),
            BaseImage::Archive("base.tar".into())
        );
        assert_eq!(
            base("{ rootfs = \"root\" }").unwrap(),
            BaseImage::Rootfs("root".into())
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        let cases = [
            ("steps = []\n", "line 3", "needs a base"),
            ("base = \"Shop\"\n", "line 4, column 8", "name:tag"),
            ("base = { tarball = \"x\" }\n", "line 4", "tarball"),
            ("base = { rootfs = \"/abs\" }\n", "line 4", "absolute"),
            ("base = \"scratch\"\nbogus = 1\n", "line 5", "bogus"),
            (
                "base = \"scratch\"\nsteps = [\n { copy = \"a\" },\n]\n",
                "line 6, column 2",
                "needs to =",
            ),
            (
                "base = \"scratch\"\nsteps = [\n { copy = \"../a\", to = \"/a\" },\n]\n",
                "line 6, column 11",
                "leaves the app folder",
            ),
            (
                "base = \"scratch\"\nsteps = [{ copy = \"a\", to = \"rel\" }]\n",
                "line 5",
                "absolute",
            ),
            (
                "base = \"scratch\"\nsteps = [{ copy = \"a\", to = \"/a\", mode = \"9\" }]\n",
                "line 5",
                "octal",
            ),
            (
                "base = \"scratch\"\nsteps = [{ copy = \"a\", to = \"/a\", owner = \"me\" }]\n",
                "line 5",
                "numeric",
            ),
            (
                "base = \"scratch\"\nsteps = [{ run = [] }]\n",
                "line 5",
                "run:",
            ),
            (
                "base = \"scratch\"\nsteps = [{ run = [\"x\"], to = \"/a\" }]\n",
                "line 5",
                "'to' belongs to a copy step",
            ),
            (
                "base = \"scratch\"\nsteps = [{ cmd = [\"x\"], port = 1 }]\n",
                "line 5",
                "cmd and port",
            ),
            (
                "base = \"scratch\"\nsteps = [{ port = 0 }]\n",
                "line 5",
                "port must be",
            ),
            (
                "base = \"scratch\"\nsteps = [{ env = { \"1A\" = \"x\" } }]\n",
                "line 5",
                "variable",
            ),
            (
                "base = \"scratch\"\nsteps = [{ copy = \"a\", to = \"/a\", chmod = \"1\" }]\n",
                "line 5",
                "chmod",
            ),
            (
                "base = \"scratch\"\nsteps = [{}]\n",
                "line 5",
                "needs one of",
            ),
        ];
        for (table, want_at, want_what) in cases {
            let err = build(table).unwrap_err().to_string();
            assert!(err.contains(want_at), "{err:?} lacks {want_at:?}");
            assert!(err.contains(want_what), "{err:?} lacks {want_what:?}");
        }
    }

    #[test]
    fn no_build_table_means_none() {
        let m = Manifest::parse("name = \"a\"\ncommand = [\"x\"]\n", "molt.toml").unwrap();
        assert_eq!(m.build, None);
    }

    fn step_strategy() -> impl Strategy<Value = String> {
        let word = "[a-z0-9_][a-z0-9_.-]{0,11}";
        prop_oneof![
            (word, word, proptest::option::of(0u32..0o7777)).prop_map(|(s, t, m)| {
                let mode = m
                    .map(|m| format!(", mode = \"{m:04o}\""))
                    .unwrap_or_default();
                format!("{{ copy = \"{s}\", to = \"/{t}\"{mode} }}")
            }),
            (word, any::<bool>())
                .prop_map(|(c, n)| format!("{{ run = [\"{c}\"], network = {n} }}")),
            (1u16..).prop_map(|p| format!("{{ port = {p} }}")),
            word.prop_map(|w| format!("{{ workdir = \"/{w}\" }}")),
            word.prop_map(|w| format!("{{ cmd = [\"{w}\", \"x\"] }}")),
            "[A-Z][A-Z0-9_]{0,6}".prop_map(|k| format!("{{ env = {{ {k} = \"v\" }} }}")),
        ]
    }

    proptest! {
        #[test]
        fn build_parse_never_panics(s in "\\PC{0,120}") {
            let _ = build(&s);
        }

        #[test]
        fn valid_steps_round_trip_their_count(steps in proptest::collection::vec(step_strategy(), 0..8)) {
            let table = format!("base = \"scratch\"\nsteps = [\n{}\n]\n", steps.join(",\n"));
            let spec = build(&table).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(spec.steps.len(), steps.len());
        }

        #[test]
        fn canonical_text_tells_steps_apart(a in step_strategy(), b in step_strategy()) {
            // The text is part of the cache key: two different steps must never share it.
            let one = |s: &str| build(&format!("base = \"scratch\"\nsteps = [{s}]\n"));
            if let (Ok(x), Ok(y)) = (one(&a), one(&b)) {
                let (x, y) = (&x.steps[0], &y.steps[0]);
                prop_assert_eq!(x == y, x.to_string() == y.to_string());
            }
        }
    }
}
