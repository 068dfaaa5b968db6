//! `pause smtp` / `resume smtp`: whether the listeners accept new sessions.
//!
//! A paused listener keeps its socket bound (clients queue in the kernel's backlog, as with
//! OpenSMTPD, instead of being refused); only the accept loop stops. Sessions already open
//! are not touched. Each listener's accept loop runs on a duplicate of the bound socket, so
//! stopping the loop closes the duplicate and leaves the socket listening.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use crate::smtp::server::{Server, accept_loop};

/// The switch shared by the control socket and every listener.
#[derive(Debug)]
pub struct SmtpGate {
    paused: watch::Sender<bool>,
}

impl SmtpGate {
    /// `paused`: start with the listeners stopped (`smtpd -P smtp`).
    pub fn new(paused: bool) -> Arc<SmtpGate> {
        Arc::new(SmtpGate {
            paused: watch::Sender::new(paused),
        })
    }

    /// Pause (true) or resume (false); returns false when it already was in that state.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.send_if_modified(|p| {
            let changed = *p != paused;
            *p = paused;
            changed
        })
    }

    /// Whether accepting is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Serve one bound listener, accepting only while the gate is open.
    pub async fn serve(
        self: Arc<Self>,
        server: Arc<Server>,
        socket: std::net::TcpListener,
        index: usize,
    ) {
        let mut rx = self.paused.subscribe();
        loop {
            // Wait for the gate to open.
            while *rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            let listener = match socket
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    warn!("warn: smtp: listener: {}", crate::log::strerror(&e));
                    return;
                }
            };
            let task = tokio::spawn(accept_loop(server.clone(), listener, index));
            // Accept until the gate closes.
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                if *rx.borrow_and_update() {
                    break;
                }
            }
            task.abort();
            let _ = task.await;
        }
    }
}
