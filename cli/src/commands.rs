//! The commands: each takes the parsed arguments, does its work through a [`Client`], and
//! prints text or JSON.

pub mod account;
pub mod chat;
pub mod devices;
pub mod files;
pub mod messages;
pub mod rooms;
pub mod verify;

use crate::client::{Client, Selector};
use crate::{Cli, Command, discovery, output};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let selector = Selector { profile: cli.profile, user: cli.as_user, keyring: cli.keyring };
    let json = cli.json;
    let http = discovery::http_client()?;
    let open = || Client::open(http.clone(), &selector);
    match cli.command {
        Command::Discover { server } => {
            let found = discovery::discover(&http, &server).await?;
            output::emit(json, &found, |found| {
                format!("homeserver: {}\nversions:   {}", found.base_url, found.versions.join(", "))
            })
        }
        Command::Register { server, username, password, token, device_name } => {
            account::register(&http, &selector, json, &server, &username, password, token, &device_name).await
        }
        Command::Login { server, username, password, device_name } => {
            account::login(&http, &selector, json, &server, &username, password, &device_name).await
        }
        Command::Logout { all } => account::logout(open().await?, json, all).await,
        Command::Whoami => account::whoami(&open().await?, json).await,
        Command::Accounts => account::accounts(json),
        Command::Rooms(command) => rooms::run(&mut open().await?, json, command).await,
        Command::Join { room } => rooms::join(&mut open().await?, json, &room).await,
        Command::Leave { room } => rooms::leave(&mut open().await?, json, &room).await,
        Command::Invite { room, user } => {
            rooms::membership(&mut open().await?, json, "invite", &room, &user, None).await
        }
        Command::Kick { room, user, reason } => {
            rooms::membership(&mut open().await?, json, "kick", &room, &user, reason).await
        }
        Command::Ban { room, user, reason } => {
            rooms::membership(&mut open().await?, json, "ban", &room, &user, reason).await
        }
        Command::Unban { room, user } => rooms::membership(&mut open().await?, json, "unban", &room, &user, None).await,
        Command::Members { room } => rooms::members(&open().await?, json, &room).await,
        Command::Directory { search, server, limit } => {
            rooms::directory(&open().await?, json, search, server, limit).await
        }
        Command::Send { room, text, emote, notice } => {
            let msgtype = if emote {
                "m.emote"
            } else if notice {
                "m.notice"
            } else {
                "m.text"
            };
            messages::send(&mut open().await?, json, &room, text, msgtype).await
        }
        Command::Dm { user, text } => messages::dm(&mut open().await?, json, &user, text).await,
        Command::History { room, limit } => messages::history(&mut open().await?, json, &room, limit).await,
        Command::Listen { room, follow } => messages::listen(&mut open().await?, json, room.as_deref(), follow).await,
        Command::SendFile { room, path, quiet } => {
            files::send_file(&mut open().await?, json, &room, &path, quiet).await
        }
        Command::Download { target, room, output } => {
            files::download(&mut open().await?, json, &target, room.as_deref(), output).await
        }
        Command::Who { all } => account::who(&mut open().await?, json, all).await,
        Command::Profile(command) => account::profile(&open().await?, json, command).await,
        Command::Chat { room } => chat::run(&mut open().await?, &room).await,
        Command::Devices(command) => devices::run(&open().await?, json, command).await,
        Command::Keys(command) => devices::keys(&mut open().await?, json, command).await,
        Command::Verify { user, device, incoming, yes } => {
            anyhow::ensure!(
                user.is_some() != incoming,
                "name a user to verify, or pass --incoming to answer a request"
            );
            verify::run(&mut open().await?, json, user, device, yes).await
        }
    }
}

/// A password from the flag or environment, else from the terminal.
pub fn password(given: Option<String>, prompt: &str) -> anyhow::Result<String> {
    if let Some(password) = given {
        return Ok(password);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("no password: pass --password or set MYELIN_PASSWORD");
    }
    Ok(rpassword::prompt_password(prompt)?)
}

/// The text argument, or all of stdin when it is absent.
pub async fn text_or_stdin(text: Option<String>) -> anyhow::Result<String> {
    let text = match text {
        Some(text) => text,
        None => {
            let mut input = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::stdin(), &mut input).await?;
            input.trim_end_matches('\n').to_owned()
        }
    };
    anyhow::ensure!(!text.trim().is_empty(), "nothing to send: the message is empty");
    Ok(text)
}
