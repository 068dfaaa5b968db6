//! Packets with descriptors between smtpd's own processes: one `SOCK_SEQPACKET` message
//! is one request or answer, and open files (a queued message, a reply socket) travel with
//! it as `SCM_RIGHTS`. The privileged broker and the delivery workers speak through these.

use std::cell::RefCell;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, setsockopt, socketpair, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

/// A connected pair of packet sockets, both closed on exec.
pub fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Bounds every [`receive`] on `socket` (whole seconds, at least one); a receive that waits
/// longer fails with `EAGAIN`.
pub fn receive_timeout(socket: &impl AsFd, wait: Duration) -> nix::Result<()> {
    let secs = i64::try_from(wait.as_secs().max(1)).unwrap_or(i64::MAX);
    setsockopt(socket, sockopt::ReceiveTimeout, &TimeVal::seconds(secs))
}

/// One packet as received.
pub struct Packet {
    /// The bytes.
    pub payload: Vec<u8>,
    /// The descriptors that came with them.
    pub fds: Vec<OwnedFd>,
    /// The payload or its descriptors did not fit.
    pub truncated: bool,
}

/// Send one packet with `fds` attached.
pub fn send(socket: &impl AsFd, payload: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(payload)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            socket.as_fd().as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            r => return r.map(|_| ()),
        }
    }
}

thread_local! {
    /// Where [`receive`] lands a packet before copying out its actual length: a buffer of
    /// the largest size asked for so far, zeroed once per thread rather than per packet
    /// (and never freed and re-allocated, which at 64 KiB would make the allocator
    /// consolidate its free lists every time).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Receive one packet of at most `max` bytes and two descriptors; `None` at end of file.
pub fn receive(socket: &impl AsFd, max: usize) -> nix::Result<Option<Packet>> {
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < max {
            scratch.resize(max, 0);
        }
        receive_into(socket, &mut scratch[..max])
    })
}

fn receive_into(socket: &impl AsFd, buf: &mut [u8]) -> nix::Result<Option<Packet>> {
    let mut space = nix::cmsg_space!([RawFd; 2]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match recvmsg::<()>(
            socket.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(m) => m,
        };
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(list) = c {
                    for fd in list {
                        // SAFETY: the kernel installed `fd` in this process while receiving
                        // the SCM_RIGHTS message; nothing else knows the number, so the
                        // OwnedFd is its only owner and closes it exactly once.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let bytes = msg.bytes;
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        if bytes == 0 && fds.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Packet {
            payload: buf[..bytes].to_vec(),
            fds,
            truncated,
        }));
    }
}
