//! A program in a detached tmux session, driven by keys and read from
//! the screen: how the dashboard and the REPL are tested as an operator
//! uses them.

use std::process::Command;
use std::time::Duration;

use crate::eventually;

/// How long a screen may take to show what a test waits for.
pub const SCREEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A detached tmux session, killed when dropped.
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// `name` tells this test's session from the others running at once.
    pub fn start(name: &str, command: &str) -> Self {
        let session = format!("blixard-test-{}-{name}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "120",
                "-y",
                "32",
                command,
            ])
            .status()
            .expect("tmux runs (Debian package tmux)");
        assert!(status.success(), "tmux new-session failed");
        Tmux { session }
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        let status = Command::new("tmux").args(&args).status().unwrap();
        assert!(status.success(), "tmux send-keys {keys:?} failed");
    }

    pub fn screen(&self) -> String {
        let output = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the screen shows `text`; returns the screen.
    pub async fn wait_for(&self, text: &str) -> String {
        eventually(
            &format!("{text:?} on the dashboard"),
            SCREEN_TIMEOUT,
            || async {
                let screen = self.screen();
                screen.contains(text).then_some(screen)
            },
        )
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}
