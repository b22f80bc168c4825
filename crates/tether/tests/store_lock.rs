//! A SQLite store belongs to one process: a second `tether serve` on the same file is refused
//! at start, naming the holder; once the holder dies (even by kill -9) the store is free.

mod harness;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::within;
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn serve(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("sessions.db").display()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tether-echo"))
        .env("XDG_STATE_HOME", dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn started(dir: &Path) -> (Child, u16) {
    let port = free_port();
    let child = serve(dir, port).spawn().expect("spawn");
    within(async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (child, port)
}

#[tokio::test]
async fn a_second_tether_on_the_same_sqlite_file_is_refused_naming_the_holder() {
    let dir = std::env::temp_dir().join(format!("tether-store-lock-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut first, port) = started(&dir).await;
    let pid = first.id().expect("running");

    let second = within(serve(&dir, free_port()).output()).await.expect("runs");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second tether must not start: {stderr}");
    assert!(stderr.contains("is in use by another tether"), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    assert!(stderr.contains(&format!("listening on 127.0.0.1:{port}")), "{stderr}");
    assert!(first.try_wait().expect("status").is_none(), "the first one serves on");

    // A crash releases the store: the next tether starts on it.
    harness::kill9(pid);
    within(first.wait()).await.expect("reaped");
    let (mut third, _) = started(&dir).await;
    assert!(third.try_wait().expect("status").is_none());
    harness::kill9(third.id().expect("running"));
    let _ = within(third.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
