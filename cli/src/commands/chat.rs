//! `myelin chat ROOM`: messages appear as they arrive; typed lines are sent; slash commands
//! move between rooms and manage them.

use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::{account, files, messages, rooms};
use crate::client::Client;
use crate::view::{self, RoomNames};
use crate::{RoomsCommand, sync};

const HELP: &str = "\
/join ROOM          join a room (alias or ID) and chat there
/leave              leave this room
/msg @user TEXT     send a direct message
/list               your rooms
/create NAME        create an encrypted room and chat there
/invite @user       invite someone here
/kick @user [WHY]   remove someone from here
/file PATH          send a file here (encrypted in encrypted rooms)
/who                who is online
/quit               leave the chat (also Ctrl-D)";

pub async fn run(client: &mut Client, room: &str) -> anyhow::Result<()> {
    let mut room_id = rooms::resolve(client, room).await?;
    let mut names = RoomNames::default();
    println!("-- chatting in {}; /help lists commands, /quit ends", names.get(client, &room_id).await);
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if lines_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let mut timeout = 0;
    loop {
        let since = client.since().await?;
        // Only the request is raced against typing; what it brings is stored uninterrupted.
        tokio::select! {
            response = sync::fetch(client.api.clone(), since.clone(), timeout) => {
                client.process_sync(&response?, since.as_deref()).await?;
                for entry in client.inbox().await? {
                    let message = view::message(client, &mut names, &entry.room_id, &entry.event).await;
                    if message.is_chat() {
                        println!("{}", message.line());
                    }
                    client.inbox_done(entry.position).await?;
                }
                timeout = 30_000;
            }
            line = lines.recv() => {
                let Some(line) = line else { return Ok(()) };
                match handle(client, &mut room_id, line.trim()).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(err) => println!("-- {err:#}"),
                }
            }
        }
    }
}

/// One typed line; `Ok(false)` ends the chat.
async fn handle(client: &mut Client, room_id: &mut String, line: &str) -> anyhow::Result<bool> {
    if line.is_empty() {
        return Ok(true);
    }
    let Some(command) = line.strip_prefix('/') else {
        messages::send_event(client, room_id, "m.room.message", &json!({ "msgtype": "m.text", "body": line })).await?;
        return Ok(true);
    };
    let (name, rest) = command.split_once(' ').map_or((command, ""), |(n, r)| (n, r.trim()));
    let arg = |what: &str| -> anyhow::Result<String> {
        anyhow::ensure!(!rest.is_empty(), "/{name} needs {what}");
        Ok(rest.to_owned())
    };
    match name {
        "quit" | "exit" => return Ok(false),
        "help" => println!("{HELP}"),
        "join" => {
            rooms::join(client, false, &arg("a room")?).await?;
            *room_id = rooms::resolve(client, rest).await?;
        }
        "leave" => {
            rooms::leave(client, false, room_id).await?;
            return Ok(false);
        }
        "msg" => {
            let (user, text) = arg("@user and a message")?
                .split_once(' ')
                .map(|(u, t)| (u.to_owned(), t.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("/msg needs @user and a message"))?;
            messages::dm(client, false, &user, Some(text)).await?;
        }
        "list" => rooms::run(client, false, RoomsCommand::List).await?,
        "create" => {
            let name = arg("a name")?;
            *room_id = rooms::create(client, Some(&name), false, None, None, &[], true, false).await?;
            println!("-- created {name}; chatting there");
        }
        "invite" => rooms::membership(client, false, "invite", room_id, &arg("@user")?, None).await?,
        "kick" => {
            let rest = arg("@user")?;
            let (user, reason) = rest.split_once(' ').map_or((rest.as_str(), None), |(u, r)| (u, Some(r.to_owned())));
            rooms::membership(client, false, "kick", room_id, user, reason).await?;
        }
        "file" => files::send_file(client, false, room_id, std::path::Path::new(&arg("a path")?), false).await?,
        "who" => account::who(client, false, false).await?,
        other => anyhow::bail!("unknown command /{other} (/help lists them)"),
    }
    Ok(true)
}
