//! Alarms (etcd's NOSPACE and CORRUPT): which are raised (persisted as alarm records, so
//! snapshots and restarts keep them) and the gate [`Mvcc::apply`] puts in front of every
//! command while one is raised. Raising and clearing are log entries, so every node refuses
//! the same writes from the same entry on.

use std::collections::BTreeSet;

use muster_types::{Alarm, AlarmAction, AlarmMember, ApplyError, Command, ResponseBody};

use super::codec::alarm_key;
use super::Mvcc;

/// The raised alarms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Alarms(BTreeSet<AlarmMember>);

impl Alarms {
    pub fn insert(&mut self, a: AlarmMember) {
        self.0.insert(a);
    }

    fn any(&self, alarm: Alarm) -> bool {
        self.0.iter().any(|a| a.alarm == alarm)
    }
}

impl Mvcc {
    /// Every raised alarm, by member then kind.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms.0.iter().copied().collect()
    }

    /// The error a raised alarm answers `cmd` with, if one stops it. CORRUPT is checked first:
    /// it stops more.
    pub(super) fn alarm_refusal(&self, cmd: &Command) -> Option<ApplyError> {
        if self.alarms.0.is_empty() {
            return None;
        }
        if self.alarms.any(Alarm::Corrupt) && cmd.stopped_by(Alarm::Corrupt) {
            return Some(ApplyError::Corrupt);
        }
        if self.alarms.any(Alarm::NoSpace) && cmd.stopped_by(Alarm::NoSpace) {
            return Some(ApplyError::NoSpace);
        }
        None
    }

    /// Raises or clears one member's alarm; answers what changed (as etcd, which returns the
    /// alarm only when it was not raised before / was raised).
    pub(super) fn apply_alarm(
        &mut self,
        batch: &mut sled::Batch,
        action: AlarmAction,
        member: AlarmMember,
    ) -> ResponseBody {
        let changed = match action {
            AlarmAction::Activate => {
                let new = self.alarms.0.insert(member);
                if new {
                    batch.insert(&alarm_key(member), &[]);
                    tracing::warn!(
                        member_id = member.member_id,
                        alarm = member.alarm.name(),
                        "alarm raised"
                    );
                }
                new
            }
            AlarmAction::Deactivate => {
                let was = self.alarms.0.remove(&member);
                if was {
                    batch.remove(&alarm_key(member));
                    tracing::info!(
                        member_id = member.member_id,
                        alarm = member.alarm.name(),
                        "alarm cleared"
                    );
                }
                was
            }
        };
        ResponseBody::Alarm(changed.then_some(member))
    }
}
