//! `myelin`: a Matrix command-line client with end-to-end encryption. Every command has `--json`
//! output; errors are one line on stderr and a non-zero exit status.

mod api;
mod attachment;
mod client;
mod commands;
mod crypto;
mod discovery;
mod key_export;
mod output;
mod secrets;
mod store;
mod sync;
mod view;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A Matrix client for the terminal, with end-to-end encryption.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The profile (logged-in account) to act as; `default` unless there is only one.
    #[arg(long, global = true, env = "MYELIN_PROFILE")]
    profile: Option<String>,
    /// Act as the profile logged in as this user ID.
    #[arg(long = "user", id = "as_user", global = true, value_name = "USER_ID")]
    as_user: Option<String>,
    /// Where a new login keeps its secrets (default: the best one available).
    #[arg(long, global = true, value_enum, env = "MYELIN_KEYRING")]
    keyring: Option<secrets::Backend>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Find a homeserver's client API (via .well-known) and the spec versions it speaks.
    Discover {
        /// A server name (`example.org`) or a base URL (`http://localhost:8008`).
        server: String,
    },
    /// Create an account and log in to it.
    Register {
        /// The homeserver: a server name or base URL.
        server: String,
        /// The user name (localpart) to register.
        username: String,
        /// Password (else $MYELIN_PASSWORD, else asked on the terminal).
        #[arg(long, env = "MYELIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// A registration token, if the homeserver requires one.
        #[arg(long)]
        token: Option<String>,
        /// A name for this device, shown to you and to people you talk to.
        #[arg(long, default_value = "myelin CLI")]
        device_name: String,
    },
    /// Log in to an existing account.
    Login {
        /// The homeserver: a server name or base URL.
        server: String,
        /// User name or full user ID.
        username: String,
        #[arg(long, env = "MYELIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, default_value = "myelin CLI")]
        device_name: String,
    },
    /// Log out and remove this profile's keys and local store.
    Logout {
        /// Log out every device of the account.
        #[arg(long)]
        all: bool,
    },
    /// Who am I logged in as, and where are my secrets?
    Whoami,
    /// The accounts logged in on this machine.
    Accounts,
    /// Rooms: list, create, rename.
    #[command(subcommand)]
    Rooms(RoomsCommand),
    /// Join a room by alias (`#room:server`) or ID, or accept an invite.
    Join { room: String },
    /// Leave a room.
    Leave { room: String },
    /// Invite a user to a room.
    Invite { room: String, user: String },
    /// Remove a user from a room.
    Kick {
        room: String,
        user: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ban a user from a room.
    Ban {
        room: String,
        user: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Unban { room: String, user: String },
    /// A room's members.
    Members { room: String },
    /// Public rooms of the homeserver's directory.
    Directory {
        /// Only rooms whose name, topic or alias contains this.
        search: Option<String>,
        /// Another server's directory.
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send a text message (read from stdin when TEXT is absent).
    Send {
        room: String,
        text: Option<String>,
        /// Send as an emote (`/me`).
        #[arg(long)]
        emote: bool,
        /// Send as a notice (for bots).
        #[arg(long)]
        notice: bool,
    },
    /// Send a direct message, creating the encrypted direct room if needed.
    Dm { user: String, text: Option<String> },
    /// Recent messages of a room, decrypted.
    History {
        room: String,
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
    },
    /// Print messages that arrived since the last `listen`; with --follow, keep printing.
    Listen {
        /// Only this room.
        room: Option<String>,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Send a file, encrypted in encrypted rooms.
    SendFile {
        room: String,
        path: PathBuf,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Download (and decrypt) a file by its event ID or mxc:// URI.
    Download {
        /// An event ID (`$…`) of a file message, or an `mxc://` URI of an unencrypted file.
        target: String,
        /// The room of the event (else all joined rooms are searched).
        #[arg(long)]
        room: Option<String>,
        /// Where to write it (default: the file's name in the current folder; `-` for stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Users sharing a room with you who are online now.
    Who {
        /// Everyone sharing a room with you, with their presence.
        #[arg(long)]
        all: bool,
    },
    /// Show or change a profile (display name, avatar).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// An interactive chat: messages appear as they arrive, lines you type are sent.
    Chat { room: String },
    /// Your devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Room key export and import (the standard encrypted key file), cross-signing.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Verify a user's device (or your own other device) by comparing emoji (SAS).
    Verify {
        /// The user to verify (yourself for your own other device).
        user: Option<String>,
        /// Only this device (else every device of theirs is asked; the first to answer counts).
        device: Option<String>,
        /// Answer a verification request from someone else instead.
        #[arg(long)]
        incoming: bool,
        /// Do not ask whether the emoji match (for scripts that compare them another way).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum RoomsCommand {
    /// Joined rooms, with names and member counts.
    List,
    /// Create a room (end-to-end encrypted unless --unencrypted).
    Create {
        name: String,
        /// List it in the public directory and let anyone join.
        #[arg(long)]
        public: bool,
        /// A local alias: `--alias lobby` gives `#lobby:yourserver`.
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        topic: Option<String>,
        /// Users to invite.
        #[arg(long, num_args = 1..)]
        invite: Vec<String>,
        #[arg(long)]
        unencrypted: bool,
    },
    /// Show or set a room's name.
    Name { room: String, name: Option<String> },
    /// Show or set a room's topic.
    Topic { room: String, topic: Option<String> },
}

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// A user's display name and avatar (yours by default).
    Get { user: Option<String> },
    /// Change your display name or avatar.
    Set {
        #[arg(long)]
        name: Option<String>,
        /// An `mxc://` URI.
        #[arg(long)]
        avatar: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DevicesCommand {
    /// Your devices, or another user's with whether their owner cross-signed them.
    List { user: Option<String> },
    /// Rename one of your devices.
    Rename { device_id: String, name: String },
    /// Log out and delete devices (asks for your password).
    Delete {
        #[arg(required = true)]
        device_ids: Vec<String>,
        #[arg(long, env = "MYELIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Write every room key this device holds to an encrypted file.
    Export {
        path: PathBuf,
        /// The file's passphrase (else $MYELIN_KEY_PASSPHRASE, else asked).
        #[arg(long, env = "MYELIN_KEY_PASSPHRASE", hide_env_values = true)]
        passphrase: Option<String>,
    },
    /// Read room keys from an exported file (from myelin or another client).
    Import {
        path: PathBuf,
        #[arg(long, env = "MYELIN_KEY_PASSPHRASE", hide_env_values = true)]
        passphrase: Option<String>,
    },
    /// Create and publish cross-signing keys and sign this device with them (replacing
    /// existing keys asks for your password).
    CrossSigning {
        #[arg(long, env = "MYELIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    // Before any thread exists: keyrings are per-thread credentials, and the runtime's threads
    // must inherit the session keyring.
    secrets::prepare_process();
    let cli = Cli::parse();
    if rustls::crypto::aws_lc_rs::default_provider().install_default().is_err() {
        // Already installed: nothing to do.
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("myelin: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("myelin: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
