//! Swaps: starting a successor beside the serving child, and what keeps a swap from wedging
//! the master. A child that has not said it serves within `readyTimeout` is killed (during a
//! swap the old one serves on); a SIGHUP that arrives while a child is starting is carried out
//! once it is done; a config the successor would refuse is refused here, before any process
//! is started for it.

use std::time::Instant;

use super::Master;
use super::children::{self, Child};
use crate::client::admin_server::bind_admin_socket;
use crate::config::Config;
use crate::generation::Cause;
use crate::systemd;

impl Master {
    /// Starts a successor beside the current child (recycle or upgrade). While a child is
    /// starting, an upgrade is remembered and carried out once it is done.
    pub(super) fn replace(&mut self, cause: Cause, why: &str) {
        if self.stopping {
            log::warn!("{why}: stopping; no new server process");
            return;
        }
        if self.next.is_some() || !self.current_ready {
            if cause == Cause::Upgrade {
                log::info!("{why}: a server process is starting; the swap follows once it is done");
                self.swap_pending = true;
            } else {
                log::warn!("{why}: not now, a server process is starting");
            }
            return;
        }
        if cause == Cause::Upgrade {
            systemd::notify_reloading();
            // The successor re-reads the config; the master needs two of its keys first.
            if let Err(error) = self.reread_config() {
                log::error!("{why}: {error}; generation {} serves on", self.generations);
                systemd::notify("READY=1");
                return;
            }
        }
        match self.start(cause) {
            Ok(child) => self.next = Some(child),
            Err(error) => {
                log::error!("{why}: cannot start a new server process: {error}");
                systemd::notify("READY=1");
            }
        }
    }

    /// Takes `readyTimeout` and `adminAddress` from the config file, binding the new admin
    /// address if it moved. A config the successor would refuse is refused here, so that no
    /// process is started for it.
    pub(super) fn reread_config(&mut self) -> Result<(), String> {
        let config = Config::load(&self.config_path).map_err(|e| format!("bad config: {e}"))?;
        let kept = self.admin.as_ref().map(|(address, _)| *address);
        if config.admin_address != kept {
            self.admin = match config.admin_address {
                Some(address) => {
                    let socket = bind_admin_socket(address).map_err(|e| e.to_string())?;
                    let socket = children::out_of_the_way(socket).map_err(|e| e.to_string())?;
                    Some((address, socket))
                }
                None => None,
            };
        }
        self.ready_timeout = config.ready_timeout;
        Ok(())
    }

    /// Carries out a SIGHUP that came while a child was starting.
    pub(super) fn swap_if_pending(&mut self) {
        if std::mem::take(&mut self.swap_pending) {
            self.replace(Cause::Upgrade, "SIGHUP (received during the last swap)");
        }
    }

    /// The child that has not said it serves yet, if any: a successor, or the current one
    /// after a crash.
    pub(super) fn starting(&self) -> Option<&Child> {
        self.next
            .as_ref()
            .or(self.current.as_ref().filter(|_| !self.current_ready))
    }

    /// When the starting child must have said it serves.
    pub(super) fn ready_deadline(&self) -> Option<Instant> {
        self.starting()
            .map(|child| child.started + self.ready_timeout)
    }

    /// Kills a child that did not say it serves within `readyTimeout`; its exit is then
    /// handled as any failure to start.
    pub(super) fn kill_if_not_ready(&mut self) {
        if self.ready_deadline().is_some_and(|at| at <= Instant::now())
            && let Some(child) = self.starting()
        {
            log::error!(
                "generation {} (pid {}) did not become ready within {}: killing it",
                child.generation.number,
                child.pid,
                crate::duration::format_duration(self.ready_timeout)
            );
            child.kill_group();
        }
    }
}
