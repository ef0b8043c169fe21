//! Files: `send-file` (encrypted per the spec's attachment format in encrypted rooms) and
//! `download` (hash checked before the file gets its name).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{messages, rooms};
use crate::attachment::{Decryptor, EncryptedFile, Encryptor};
use crate::client::Client;
use crate::output;

const CHUNK: usize = 256 * 1024;

pub async fn send_file(client: &mut Client, json: bool, room: &str, path: &Path, quiet: bool) -> anyhow::Result<()> {
    let room_id = rooms::resolve(client, room).await?;
    let size = tokio::fs::metadata(path).await.with_context(|| format!("cannot read {}", path.display()))?.len();
    let name = path.file_name().and_then(|n| n.to_str()).context("the file has no usable name")?.to_owned();
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let encrypted = rooms::encryption(client, &room_id).await?.is_some();
    let mut info = json!({ "mimetype": mime.essence_str(), "size": size });
    let msgtype = match mime.type_().as_str() {
        "image" => {
            // Size from the header only; a file the decoder does not know goes without.
            let reader = image::ImageReader::open(path).and_then(|r| r.with_guessed_format());
            if let Ok(Ok((w, h))) = reader.map(|r| r.into_dimensions()) {
                info["w"] = json!(w);
                info["h"] = json!(h);
            }
            "m.image"
        }
        "video" => "m.video",
        "audio" => "m.audio",
        _ => "m.file",
    };
    let bar = progress(size, quiet || json);
    let encryptor = Arc::new(Mutex::new(encrypted.then(Encryptor::new)));
    let upload_type = if encrypted { "application/octet-stream".to_owned() } else { mime.essence_str().to_owned() };
    let mxc = upload(client, path, size, &name, &upload_type, encryptor.clone(), bar.clone()).await?;
    bar.finish_and_clear();
    let mut content = json!({ "msgtype": msgtype, "body": name, "filename": name, "info": info });
    let sealed = encryptor.lock().map_err(|_| anyhow::anyhow!("the encryptor failed"))?.take();
    match sealed {
        Some(encryptor) => content["file"] = serde_json::to_value(encryptor.finish(mxc.clone()))?,
        None => content["url"] = json!(mxc),
    }
    let event_id = messages::send_event(client, &room_id, "m.room.message", &content).await?;
    let shown =
        json!({ "room_id": room_id, "event_id": event_id, "content_uri": mxc, "size": size, "encrypted": encrypted });
    output::emit(json, &shown, |r| {
        format!(
            "Sent {name} ({}{}): {}",
            output::bytes(size),
            if encrypted { ", encrypted" } else { "" },
            r["event_id"].as_str().unwrap_or_default()
        )
    })
}

fn progress(size: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Streams the file to the media repository, encrypting chunk by chunk when `encryptor` holds
/// one (the ciphertext is as long as the plaintext, so the length is known up front).
#[allow(clippy::too_many_arguments)]
async fn upload(
    client: &Client,
    path: &Path,
    size: u64,
    name: &str,
    content_type: &str,
    encryptor: Arc<Mutex<Option<Encryptor>>>,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<String> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
    let stream = futures_util::stream::try_unfold((file, encryptor, bar), |(mut file, encryptor, bar)| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        if let Some(encryptor) = encryptor.lock().map_err(|_| std::io::Error::other("the encryptor failed"))?.as_mut() {
            encryptor.update(&mut buf);
        }
        bar.inc(n as u64);
        Ok::<_, std::io::Error>(Some((buf, (file, encryptor, bar))))
    });
    let url = client.api.url(&["_matrix", "media", "v3"], &["upload"])?;
    let request = client
        .api
        .http()
        .post(url)
        .query(&[("filename", name)])
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .timeout(std::time::Duration::from_secs(3600))
        .body(reqwest::Body::wrap_stream(stream));
    let response: Value = client.api.raw(request).await.context("uploading the file")?.json().await?;
    response["content_uri"].as_str().map(str::to_owned).context("the homeserver returned no content URI")
}

pub async fn download(
    client: &mut Client,
    json: bool,
    target: &str,
    room: Option<&str>,
    output_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let content = if target.starts_with("mxc://") {
        json!({ "url": target })
    } else {
        client.catch_up().await?;
        file_event_content(client, target, room).await?
    };
    let file: Option<EncryptedFile> = content
        .get("file")
        .map(|file| serde_json::from_value(file.clone()))
        .transpose()
        .context("a malformed file object")?;
    let mxc = match &file {
        Some(file) => file.url.clone(),
        None => content["url"].as_str().context("the message has no file")?.to_owned(),
    };
    let (server, media_id) = mxc
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(server, id)| !server.is_empty() && !id.is_empty() && !id.contains('/'))
        .with_context(|| format!("{mxc} is not an mxc:// URI"))?;
    let suggested = content["filename"].as_str().or(content["body"].as_str()).unwrap_or(media_id);
    let to_stdout = output_path.as_deref() == Some(Path::new("-"));
    let destination = match output_path {
        Some(path) if !to_stdout => path,
        // Never let a sender choose where the file lands: keep only the base name.
        _ => PathBuf::from(Path::new(suggested).file_name().and_then(|n| n.to_str()).unwrap_or(media_id)),
    };
    let part = if to_stdout {
        std::env::temp_dir().join(format!("myelin-{}.part", uuid::Uuid::new_v4()))
    } else {
        destination
            .with_file_name(format!(".{}.part", destination.file_name().and_then(|n| n.to_str()).unwrap_or("download")))
    };
    let written = fetch_to(client, server, media_id, file.as_ref(), &part).await;
    let size = match written {
        Ok(size) => size,
        Err(err) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(err);
        }
    };
    if to_stdout {
        let mut stdout = tokio::io::stdout();
        stdout.write_all(&tokio::fs::read(&part).await?).await?;
        stdout.flush().await?;
        tokio::fs::remove_file(&part).await?;
        return Ok(());
    }
    tokio::fs::rename(&part, &destination).await.with_context(|| format!("cannot write {}", destination.display()))?;
    let shown = json!({ "path": destination, "size": size, "encrypted": file.is_some(), "content_uri": mxc });
    output::emit(json, &shown, |_| {
        format!(
            "Saved {} ({}{})",
            destination.display(),
            output::bytes(size),
            if file.is_some() { ", decrypted, hash verified" } else { "" }
        )
    })
}

/// Downloads into `part`, decrypting and checking the hash on the way when `file` is given.
async fn fetch_to(
    client: &Client,
    server: &str,
    media_id: &str,
    file: Option<&EncryptedFile>,
    part: &Path,
) -> anyhow::Result<u64> {
    let mut decryptor = file.map(Decryptor::new).transpose()?;
    let authenticated = client.api.url(&["_matrix", "client", "v1", "media", "download"], &[server, media_id])?;
    let mut response = match client
        .api
        .raw(client.api.http().get(authenticated).timeout(std::time::Duration::from_secs(3600)))
        .await
    {
        Ok(response) => response,
        // Servers older than v1.11 only have the unauthenticated endpoint.
        Err(err) if crate::api::errcode(&err) == Some("M_UNRECOGNIZED") => {
            let legacy = client.api.url(&["_matrix", "media", "v3", "download"], &[server, media_id])?;
            client.api.raw(client.api.http().get(legacy)).await?
        }
        Err(err) => return Err(err.context("downloading the file")),
    };
    let mut out = tokio::fs::File::create(part).await.with_context(|| format!("cannot create {}", part.display()))?;
    let mut size = 0u64;
    while let Some(chunk) = response.chunk().await.context("the download broke off")? {
        let mut chunk = chunk.to_vec();
        if let Some(decryptor) = decryptor.as_mut() {
            decryptor.update(&mut chunk);
        }
        out.write_all(&chunk).await?;
        size += chunk.len() as u64;
    }
    out.sync_all().await?;
    if let Some(decryptor) = decryptor {
        decryptor.finish()?;
    }
    Ok(size)
}

/// The (decrypted) content of a file message, searching joined rooms when no room is given.
async fn file_event_content(client: &Client, event_id: &str, room: Option<&str>) -> anyhow::Result<Value> {
    let candidates = match room {
        Some(room) => vec![rooms::resolve(client, room).await?],
        None => rooms::joined_rooms(client).await?,
    };
    for room_id in candidates {
        let Ok(event) = client.api.get::<Value>(&["rooms", &room_id, "event", event_id], &[]).await else { continue };
        if event["type"] != "m.room.encrypted" {
            return Ok(event["content"].clone());
        }
        return match client.decrypt_room_event(&room_id, &event).await {
            Ok(decrypted) => Ok(decrypted.content),
            Err(err) => bail!("cannot decrypt {event_id}: {err}"),
        };
    }
    bail!("no joined room has the event {event_id} (pass --room if it is in a room you left)")
}
