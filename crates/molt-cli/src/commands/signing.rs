//! `molt images keygen|sign|signatures`: Ed25519 keys made and used on this machine; only the
//! public key and the signature go to the server.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use molt_wire::{signed_message, ImageInspect, ImageSignature};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

use crate::client::Client;
use crate::output::{age, print_json, print_list};

use molt_core::hex::{decode as unhex, encode as hex};

/// `molt images keygen NAME`: NAME.key (PKCS#8, hex, 0600) and NAME.pub (64 hex digits).
pub(crate) fn keygen(name: &Path, json: bool) -> Result<i32> {
    let (key_path, pub_path) = (name.with_extension("key"), name.with_extension("pub"));
    if key_path.exists() || pub_path.exists() {
        bail!(
            "{} or {} exists already: pick another name (a key is never overwritten)",
            key_path.display(),
            pub_path.display()
        );
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow!("could not make a key (no randomness?)"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow!("the key just made does not load"))?;
    let public = hex(pair.public_key().as_ref());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("writing {}", key_path.display()))?;
    file.write_all(format!("{}\n", hex(pkcs8.as_ref())).as_bytes())?;
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    if json {
        print_json(&json!({ "key": key_path, "public_key_file": pub_path, "public_key": public }));
    } else {
        println!(
            "wrote {} (keep it secret) and {}",
            key_path.display(),
            pub_path.display()
        );
        println!("public key: {public}");
    }
    Ok(0)
}

/// `molt images sign IMAGE --key FILE`.
pub(crate) async fn sign(client: &Client, image: &str, key: &Path, json: bool) -> Result<i32> {
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    let pair = unhex(text.trim())
        .and_then(|pkcs8| Ed25519KeyPair::from_pkcs8(&pkcs8).ok())
        .ok_or_else(|| {
            anyhow!(
                "{} is not a key of `molt images keygen` (hex PKCS#8 Ed25519)",
                key.display()
            )
        })?;
    let inspect: ImageInspect = client
        .get_answer(&format!("/v1/images/{}", urlencode(image)))
        .await?
        .read()?;
    let digest = inspect.image.digest.to_string();
    let signature = hex(pair.sign(&signed_message(&digest)).as_ref());
    let answer = client
        .post_answer(
            &format!("/v1/images/{digest}/signatures"),
            &json!({ "public_key": hex(pair.public_key().as_ref()), "signature": signature }),
        )
        .await?;
    let kept: ImageSignature = answer.read()?;
    if json {
        print_json(answer.json());
    } else {
        println!(
            "signed {} with key {}…",
            kept.digest,
            &kept.public_key[..16]
        );
    }
    Ok(0)
}

/// `molt images signatures IMAGE`.
pub(crate) async fn signatures(client: &Client, image: &str, json: bool) -> Result<i32> {
    let answer = client
        .get_answer(&format!("/v1/images/{}/signatures", urlencode(image)))
        .await?;
    let list: Vec<ImageSignature> = answer.read()?;
    let header = ["KEY", "SIGNED", "BY"];
    print_list(answer.json(), &list, json, &header, |s| {
        vec![
            s.public_key.clone(),
            age(s.created_ms),
            s.created_by.clone(),
        ]
    });
    Ok(0)
}

/// A reference in a path: `:` and `/` of a tag escaped.
fn urlencode(text: &str) -> String {
    text.replace('%', "%25")
        .replace(':', "%3A")
        .replace('/', "%2F")
}
