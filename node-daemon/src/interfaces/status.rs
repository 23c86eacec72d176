//! A task's status from what the executor reported, and whether it deserves an Event. Pure: the
//! time is given, and an unchanged report renders the stored status again (no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use spiderpool_schema::SpiderInterfaceTaskStatus;
use spiderpool_schema::interfacetask::{InterfaceState, TaskPhase};

use super::executor::Report;

/// Longest message kept in the status and in an Event's note.
const MAX_MESSAGE: usize = 1000;

/// The status saying `report`, keeping `lastTransitionTime` while the phase stays.
pub fn from_report(
    report: &Report,
    previous: Option<&SpiderInterfaceTaskStatus>,
    now: Time,
) -> SpiderInterfaceTaskStatus {
    let interfaces = report
        .interfaces
        .iter()
        .map(|check| InterfaceState {
            name: check.name.clone(),
            kind: check.kind.to_owned(),
            ready: check.ready,
            message: check.message.clone(),
        })
        .collect();
    // A report that says nothing new about the interfaces (a refusal, a repeated rollback) keeps the
    // last ones seen.
    let interfaces = if report.interfaces.is_empty() && report.phase != TaskPhase::Applied {
        previous.map(|p| p.interfaces.clone()).unwrap_or_default()
    } else {
        interfaces
    };
    build(
        report.phase,
        &report.reason,
        report.message.clone(),
        interfaces,
        report.generation,
        previous,
        now,
    )
}

/// The status while a plan of `changes` operations is being applied.
pub fn applying(
    generation: Option<i64>,
    changes: usize,
    previous: Option<&SpiderInterfaceTaskStatus>,
    now: Time,
) -> SpiderInterfaceTaskStatus {
    let interfaces = previous.map(|p| p.interfaces.clone()).unwrap_or_default();
    let message = format!("applying {changes} change(s); the previous state is checkpointed");
    build(
        TaskPhase::Applying,
        "Applying",
        Some(message),
        interfaces,
        generation,
        previous,
        now,
    )
}

fn build(
    phase: TaskPhase,
    reason: &str,
    message: Option<String>,
    interfaces: Vec<InterfaceState>,
    generation: Option<i64>,
    previous: Option<&SpiderInterfaceTaskStatus>,
    now: Time,
) -> SpiderInterfaceTaskStatus {
    let last_transition_time = match previous {
        Some(p) if p.phase == Some(phase) => p.last_transition_time.clone().or(Some(now)),
        _ => Some(now),
    };
    SpiderInterfaceTaskStatus {
        observed_generation: generation,
        phase: Some(phase),
        reason: Some(reason.to_owned()),
        message: message.map(|m| truncate(&m)),
        last_transition_time,
        interfaces,
        conditions: previous.map(|p| p.conditions.clone()).unwrap_or_default(),
    }
}

/// What to tell in an Event about `report`, given the status before it: `(warning, reason, note)`.
/// Only news: changes applied, rolled back, or a phase or reason that differs from before.
pub fn event(
    report: &Report,
    previous: Option<&SpiderInterfaceTaskStatus>,
) -> Option<(bool, String, String)> {
    let same = previous.is_some_and(|p| {
        p.phase == Some(report.phase)
            && p.reason.as_deref() == Some(report.reason.as_str())
            && p.observed_generation == report.generation
    });
    match report.phase {
        TaskPhase::Applied if !report.changes.is_empty() => Some((
            false,
            "Applied".to_owned(),
            truncate(&format!(
                "{} change(s): {}",
                report.changes.len(),
                report.changes.join(", ")
            )),
        )),
        _ if same => None,
        TaskPhase::Applied if report.reason == "Degraded" => Some((
            true,
            "Degraded".to_owned(),
            truncate(report.message.as_deref().unwrap_or_default()),
        )),
        TaskPhase::Applied | TaskPhase::Pending | TaskPhase::Applying => None,
        TaskPhase::RolledBack | TaskPhase::Failed => {
            let mut note = report.message.clone().unwrap_or_default();
            if !report.rolled_back.is_empty() {
                note.push_str(&format!(" (restored with: {})", report.rolled_back.join(", ")));
            }
            Some((true, report.reason.clone(), truncate(&note)))
        }
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn report(phase: TaskPhase, reason: &str, changes: &[&str]) -> Report {
        Report {
            task: "t".into(),
            uid: "u".into(),
            generation: Some(2),
            phase,
            reason: reason.into(),
            message: Some("why".into()),
            interfaces: Vec::new(),
            changes: changes.iter().map(|c| (*c).to_owned()).collect(),
            rolled_back: vec!["del bond0".into()],
        }
    }

    #[test]
    fn the_transition_time_stays_while_the_phase_does() {
        let first = from_report(&report(TaskPhase::Failed, "Conflict", &[]), None, time(100));
        assert_eq!(first.last_transition_time, Some(time(100)));
        assert_eq!(first.observed_generation, Some(2));
        let again = from_report(
            &report(TaskPhase::Failed, "Protected", &[]),
            Some(&first),
            time(200),
        );
        assert_eq!(again.last_transition_time, Some(time(100)));
        assert_eq!(again.reason.as_deref(), Some("Protected"));
        let applying = applying(Some(3), 4, Some(&again), time(300));
        assert_eq!(applying.phase, Some(TaskPhase::Applying));
        assert_eq!(applying.last_transition_time, Some(time(300)));
        let same = from_report(
            &report(TaskPhase::Failed, "Protected", &[]),
            Some(&again),
            time(400),
        );
        assert_eq!(same, again, "an unchanged report renders the stored status");
    }

    #[test]
    fn events_are_news_only() {
        let rolled = report(TaskPhase::RolledBack, "ProbeFailed", &[]);
        assert_eq!(
            event(&rolled, None),
            Some((
                true,
                "ProbeFailed".into(),
                "why (restored with: del bond0)".into()
            ))
        );
        let stored = from_report(&rolled, None, time(1));
        assert_eq!(event(&rolled, Some(&stored)), None);
        let applied = report(
            TaskPhase::Applied,
            "Applied",
            &["add bond0 type bond mode 802.3ad"],
        );
        assert_eq!(
            event(&applied, Some(&stored)),
            Some((
                false,
                "Applied".into(),
                "1 change(s): add bond0 type bond mode 802.3ad".into()
            ))
        );
        assert_eq!(event(&report(TaskPhase::Applied, "Unchanged", &[]), None), None);
    }
}
