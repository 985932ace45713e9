//! The rescale machine on its own: every step up and down, a fault at every phase, a
//! savepoint or another checkpoint in the way, stale reports, and a property test over random
//! interleavings (the sources are never left held, the caller is answered exactly once).

use super::*;
use proptest::prelude::*;

const CHAIN: usize = 1;

fn t(subtask: usize) -> TaskId {
    TaskId {
        chain: CHAIN,
        subtask,
    }
}

/// A rescale to `n` of a chain going from `was` to `now` subtasks, with an hour to finish.
fn rescale(n: usize, was: usize, now: usize) -> Rescale {
    Rescale::new(
        "sum".into(),
        n,
        (CHAIN, was, now),
        Instant::now(),
        Duration::from_secs(3600),
    )
}

fn idle() -> JobView {
    JobView::default()
}

fn in_flight(id: u64) -> JobView {
    JobView {
        in_flight: Some(id),
        ..JobView::default()
    }
}

fn names(steps: &[Step]) -> Vec<&'static str> {
    steps
        .iter()
        .map(|s| match s {
            Step::Hold => "hold",
            Step::Release => "release",
            Step::ConfirmCommit { .. } => "confirm-commit",
            Step::Switch { .. } => "switch",
            Step::Resume { .. } => "resume",
            Step::Recover { .. } => "recover",
            Step::Done(Ok(_)) => "done",
            Step::Done(Err(InPlaceError::Refused(_))) => "refused",
            Step::Done(Err(InPlaceError::Failed(_))) => "failed",
        })
        .collect()
}

fn switched_ok(
    touched: Vec<TaskId>,
    started: Vec<TaskId>,
) -> Result<(InPlace, Vec<TaskId>, Vec<TaskId>), InPlaceError> {
    let done = InPlace {
        checkpoint: 7,
        ..InPlace::default()
    };
    Ok((done, touched, started))
}

#[test]
fn scaling_up_holds_switches_and_resumes_once_every_subtask_confirmed() {
    let mut r = rescale(3, 2, 3);
    let t0 = Instant::now();
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["hold"]);
    r.held(7, t0);
    assert!(
        r.tick(&in_flight(7), Instant::now()).is_empty(),
        "waits for its checkpoint"
    );
    // Growing: nobody leaves, so the switch follows at once.
    let steps = r.checkpoint_completed(7);
    assert_eq!(names(&steps), ["confirm-commit", "switch"]);
    assert!(matches!(&steps[0], Step::ConfirmCommit { id: 7, leaving } if leaving.is_empty()));
    assert!(r
        .switched(switched_ok(vec![t(0), t(1)], vec![t(2)]))
        .is_empty());
    assert!(r.waits_for_new(t(2)));
    assert!(!r.waits_for_new(t(1)));
    assert!(r.confirmed(t(0)).is_empty());
    assert!(r.confirmed(t(2)).is_empty());
    let steps = r.confirmed(t(1));
    assert!(matches!(&steps[..], [Step::Resume { started }] if started == &[t(2)]));
    let steps = r.first_record(t0 + Duration::from_millis(9));
    match &steps[..] {
        [Step::Done(Ok(done))] => {
            assert_eq!(done.checkpoint, 7);
            assert_eq!(done.pause, Duration::from_millis(9));
        }
        other => panic!("expected done, got {:?}", names(other)),
    }
}

#[test]
fn a_resumed_rescale_with_no_record_answers_after_the_grace_with_the_pause_until_the_resume() {
    let mut r = rescale(3, 2, 3);
    let t0 = Instant::now();
    assert_eq!(names(&r.tick(&idle(), t0)), ["hold"]);
    r.held(7, t0);
    assert_eq!(
        names(&r.checkpoint_completed(7)),
        ["confirm-commit", "switch"]
    );
    assert!(r
        .switched(switched_ok(vec![t(0), t(1)], vec![t(2)]))
        .is_empty());
    r.confirmed(t(0));
    r.confirmed(t(2));
    assert_eq!(names(&r.confirmed(t(1))), ["resume"]);
    let resumed = t0 + Duration::from_millis(12);
    r.resumed(resumed);
    let almost = resumed + RESUME_GRACE - Duration::from_millis(1);
    assert!(
        r.tick(&idle(), almost).is_empty(),
        "waits for a record first"
    );
    match &r.tick(&idle(), resumed + RESUME_GRACE)[..] {
        [Step::Done(Ok(done))] => assert_eq!(done.pause, Duration::from_millis(12)),
        other => panic!("expected done, got {:?}", names(other)),
    }
    assert!(
        r.first_record(resumed + RESUME_GRACE * 2).is_empty(),
        "answered once"
    );
}

#[test]
fn scaling_down_waits_for_the_leaving_subtasks_commits() {
    let mut r = rescale(1, 3, 1);
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["hold"]);
    r.held(4, Instant::now());
    let steps = r.checkpoint_completed(4);
    assert!(
        matches!(&steps[..], [Step::ConfirmCommit { id: 4, leaving }] if leaving == &[t(1), t(2)])
    );
    assert!(
        r.committed(t(1), 3).is_empty(),
        "a commit of another checkpoint"
    );
    assert!(r.committed(t(1), 4).is_empty());
    assert!(
        r.committed(t(1), 4).is_empty(),
        "a repeated commit counts once"
    );
    assert_eq!(names(&r.committed(t(2), 4)), ["switch"]);
}

#[test]
fn a_given_up_checkpoint_releases_the_sources_and_the_rescale_starts_over() {
    let mut r = rescale(3, 2, 3);
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["hold"]);
    r.held(5, Instant::now());
    // Timed out: nothing is in flight any more.
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["release"]);
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["hold"]);
    r.held(6, Instant::now());
    assert!(r.checkpoint_completed(5).is_empty(), "the stale checkpoint");
    assert_eq!(
        names(&r.checkpoint_completed(6)),
        ["confirm-commit", "switch"]
    );
}

#[test]
fn it_waits_for_a_savepoint_a_recovery_or_a_commit_under_way() {
    let mut r = rescale(3, 2, 3);
    // A savepoint someone asked for is in flight: the rescale waits, and its completion
    // is not the rescale's.
    assert!(r.tick(&in_flight(3), Instant::now()).is_empty());
    assert!(r.checkpoint_completed(3).is_empty());
    let recovering = JobView {
        recovering: true,
        ..JobView::default()
    };
    assert!(r.tick(&recovering, Instant::now()).is_empty());
    let committing = JobView {
        committing: true,
        ..JobView::default()
    };
    assert!(r.tick(&committing, Instant::now()).is_empty());
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["hold"]);
}

#[test]
fn a_fault_while_committing_starts_the_rescale_over_after_the_recovery() {
    let mut r = rescale(1, 2, 1);
    r.tick(&idle(), Instant::now());
    r.held(2, Instant::now());
    r.checkpoint_completed(2);
    r.recovery_started();
    assert!(
        r.committed(t(1), 2).is_empty(),
        "a commit from before the recovery"
    );
    let recovering = JobView {
        recovering: true,
        ..JobView::default()
    };
    assert!(r.tick(&recovering, Instant::now()).is_empty());
    assert_eq!(names(&r.tick(&idle(), Instant::now())), ["hold"]);
}

#[test]
fn a_fault_after_the_switch_is_carried_on_by_the_recovery() {
    let mut r = rescale(3, 2, 3);
    r.tick(&idle(), Instant::now());
    r.held(2, Instant::now());
    r.checkpoint_completed(2);
    r.switched(switched_ok(vec![t(0), t(1)], vec![t(2)]));
    r.confirmed(t(0));
    r.recovery_started();
    assert!(
        r.confirmed(t(1)).is_empty(),
        "no resume: the recovery runs everyone"
    );
    assert!(r.tick(&idle(), Instant::now()).is_empty());
    assert_eq!(names(&r.first_record(Instant::now())), ["done"]);
}

#[test]
fn a_switch_that_fails_releases_the_sources_and_answers() {
    let mut r = rescale(3, 2, 3);
    r.tick(&idle(), Instant::now());
    r.held(2, Instant::now());
    r.checkpoint_completed(2);
    let steps = r.switched(Err(InPlaceError::Refused("finished".into())));
    assert_eq!(names(&steps), ["release", "refused"]);
}

#[test]
fn a_blocked_rescale_is_refused_before_holding_anything() {
    let mut r = rescale(3, 2, 3);
    let blocked = JobView {
        blocked: Some("subtask 0 of `src` already finished its input".into()),
        ..JobView::default()
    };
    assert_eq!(names(&r.tick(&blocked, Instant::now())), ["refused"]);
}

#[test]
fn the_job_ending_fails_a_rescale_before_its_switch_and_completes_one_after() {
    let mut before = rescale(3, 2, 3);
    before.tick(&idle(), Instant::now());
    before.held(2, Instant::now());
    assert_eq!(names(&before.ended(Instant::now())), ["failed"]);
    assert!(before.ended(Instant::now()).is_empty(), "answered once");

    let mut after = rescale(3, 2, 3);
    after.tick(&idle(), Instant::now());
    after.held(2, Instant::now());
    after.checkpoint_completed(2);
    after.switched(switched_ok(vec![t(0)], vec![t(2)]));
    assert_eq!(names(&after.ended(Instant::now())), ["done"]);
}

/// A rescale with 10 ms to finish, asked at `t0`.
fn hurried(t0: Instant, n: usize, was: usize, now: usize) -> Rescale {
    Rescale::new(
        "sum".into(),
        n,
        (CHAIN, was, now),
        t0,
        Duration::from_millis(10),
    )
}

#[test]
fn past_its_deadline_a_rescale_gives_up_in_every_phase_and_never_leaves_the_sources_held() {
    let t0 = Instant::now();
    let late = t0 + Duration::from_millis(11);
    // Holding, the hold asked for: released, and a typed error.
    let mut r = hurried(t0, 3, 2, 3);
    r.tick(&idle(), t0);
    r.held(1, t0);
    let steps = r.tick(&in_flight(1), late);
    assert_eq!(names(&steps), ["release", "failed"]);
    assert!(matches!(
        &steps[1],
        Step::Done(Err(InPlaceError::Failed(JobError::RescaleTimedOut { .. })))
    ));
    // Holding, nothing held yet (a checkpoint of someone else's in the way).
    let mut r = hurried(t0, 3, 2, 3);
    assert!(r.tick(&in_flight(9), t0).is_empty());
    assert_eq!(names(&r.tick(&in_flight(9), late)), ["failed"]);
    // Committing: the leaving subtasks never confirmed.
    let mut r = hurried(t0, 1, 2, 1);
    r.tick(&idle(), t0);
    r.held(1, t0);
    r.checkpoint_completed(1);
    assert_eq!(names(&r.tick(&idle(), late)), ["release", "failed"]);
    // Switching: a subtask never confirmed the new plan; a recovery carries the rescale on.
    let mut r = hurried(t0, 3, 2, 3);
    r.tick(&idle(), t0);
    r.held(1, t0);
    r.checkpoint_completed(1);
    r.switched(switched_ok(vec![t(0), t(1)], vec![t(2)]));
    r.confirmed(t(0));
    let steps = r.tick(&idle(), late);
    assert!(matches!(&steps[..], [Step::Recover { waiting }] if waiting == &[t(1), t(2)]));
    r.recovery_started();
    assert_eq!(names(&r.first_record(late)), ["done"]);
    // Resuming: done even if no record comes.
    let mut r = hurried(t0, 3, 2, 3);
    r.tick(&idle(), t0);
    r.held(1, t0);
    r.checkpoint_completed(1);
    r.switched(switched_ok(vec![t(0)], vec![]));
    assert_eq!(names(&r.confirmed(t(0))), ["resume"]);
    assert_eq!(names(&r.tick(&idle(), late)), ["done"]);
}

/// What happens to a rescale in a random run.
#[derive(Clone, Debug)]
enum Event {
    Tick,
    /// The checkpoint in flight completes.
    Complete,
    /// The checkpoint in flight times out.
    TimeOut,
    /// A periodic checkpoint or savepoint starts (only while no rescale checkpoint is).
    OtherCheckpoint,
    Committed(usize),
    Confirmed(usize),
    /// A failure: a recovery starts (the sources reset and no longer hold).
    Fail,
    /// The recovery's subtasks all reset.
    Recovered,
    FirstRecord,
    SwitchFails,
    /// A second passes (the rescale has three).
    Wait,
    End,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Tick),
        3 => Just(Event::Complete),
        1 => Just(Event::TimeOut),
        1 => Just(Event::OtherCheckpoint),
        3 => (0usize..4).prop_map(Event::Committed),
        3 => (0usize..4).prop_map(Event::Confirmed),
        1 => Just(Event::Fail),
        2 => Just(Event::Recovered),
        2 => Just(Event::FirstRecord),
        1 => Just(Event::SwitchFails),
        1 => Just(Event::Wait),
        1 => Just(Event::End),
    ]
}

/// The world around the machine: what the supervisor and the subtasks would do.
struct World {
    now: Instant,
    held: bool,
    recovering: bool,
    in_flight: Option<u64>,
    next_id: u64,
    answers: usize,
    switch_fails: bool,
    ended: bool,
}

impl World {
    fn view(&self) -> JobView {
        JobView {
            recovering: self.recovering,
            in_flight: self.in_flight,
            ..JobView::default()
        }
    }

    /// Carries out `steps` as the supervisor would.
    fn run(&mut self, r: &mut Rescale, steps: Vec<Step>) -> Result<(), TestCaseError> {
        for step in steps {
            match step {
                Step::Hold => {
                    prop_assert!(!self.recovering, "held during a recovery");
                    prop_assert!(self.in_flight.is_none(), "held over another checkpoint");
                    prop_assert!(!self.held, "held again without a release");
                    self.next_id += 1;
                    self.in_flight = Some(self.next_id);
                    self.held = true;
                    r.held(self.next_id, self.now);
                }
                Step::Release => self.held = false,
                Step::ConfirmCommit { .. } => {}
                Step::Switch { .. } => {
                    let result = if self.switch_fails {
                        Err(InPlaceError::Refused("finished".into()))
                    } else {
                        switched_ok(vec![t(0), t(1)], vec![t(2), t(3)])
                    };
                    let next = r.switched(result);
                    self.run(r, next)?;
                }
                Step::Resume { .. } => {
                    self.held = false;
                    r.resumed(self.now);
                }
                Step::Recover { .. } => {
                    self.held = false;
                    self.recovering = true;
                    r.recovery_started();
                }
                Step::Done(_) => self.answers += 1,
            }
        }
        Ok(())
    }
}

impl World {
    /// At `t0`, nothing held, nothing in flight.
    fn new(t0: Instant) -> Self {
        World {
            now: t0,
            held: false,
            recovering: false,
            in_flight: None,
            next_id: 0,
            answers: 0,
            switch_fails: false,
            ended: false,
        }
    }

    /// Lets event `e` happen to the job and to the machine; returns the machine's steps.
    fn happen(&mut self, r: &mut Rescale, e: Event) -> Vec<Step> {
        match e {
            Event::Tick => r.tick(&self.view(), self.now),
            Event::Complete => match self.in_flight.take() {
                Some(id) => r.checkpoint_completed(id),
                None => Vec::new(),
            },
            Event::TimeOut => {
                self.in_flight = None;
                Vec::new()
            }
            Event::OtherCheckpoint => {
                if self.in_flight.is_none() && !self.held {
                    self.next_id += 1;
                    self.in_flight = Some(self.next_id);
                }
                Vec::new()
            }
            Event::Committed(s) => r.committed(t(s), self.next_id),
            Event::Confirmed(s) => r.confirmed(t(s)),
            Event::Fail => {
                // A recovery gives up the checkpoint in flight and resets the sources.
                self.in_flight = None;
                self.held = false;
                self.recovering = true;
                r.recovery_started();
                Vec::new()
            }
            Event::Recovered => {
                self.recovering = false;
                Vec::new()
            }
            Event::FirstRecord if self.held || self.recovering => Vec::new(),
            Event::FirstRecord => r.first_record(self.now),
            Event::SwitchFails => {
                self.switch_fails = !self.switch_fails;
                Vec::new()
            }
            Event::Wait => {
                self.now += Duration::from_secs(1);
                Vec::new()
            }
            Event::End => {
                self.ended = true;
                r.ended(self.now)
            }
        }
    }

    /// A calm stretch: no more failures, and everything the machine waits for arrives.
    fn calm(&mut self, r: &mut Rescale) -> Result<(), TestCaseError> {
        self.recovering = false;
        self.switch_fails = false;
        for _ in 0..6 {
            if self.answers > 0 {
                break;
            }
            let steps = r.tick(&self.view(), self.now);
            self.run(r, steps)?;
            if let Some(id) = self.in_flight.take() {
                let steps = r.checkpoint_completed(id);
                self.run(r, steps)?;
            }
            for s in 0..4 {
                let steps = r.committed(t(s), self.next_id);
                self.run(r, steps)?;
                let steps = r.confirmed(t(s));
                self.run(r, steps)?;
            }
            if !self.held {
                let steps = r.first_record(self.now);
                self.run(r, steps)?;
            }
        }
        Ok(())
    }
}

proptest! {
    /// Random interleavings of checkpoints (the rescale's and others), timeouts, commits,
    /// confirmations, failures, recoveries and time, then a calm stretch: the machine never
    /// holds the sources during a recovery, over another checkpoint or twice, answers the
    /// caller at most once — exactly once when the job ends or the calm lets it finish — and
    /// never leaves the sources held once it answered.
    #[test]
    fn the_sources_are_never_left_held(
        down in any::<bool>(),
        events in prop::collection::vec(event(), 1..60),
    ) {
        let (was, now) = if down { (4, 2) } else { (2, 4) };
        let t0 = Instant::now();
        let mut r = Rescale::new("sum".into(), now, (CHAIN, was, now), t0, Duration::from_secs(3));
        let mut w = World::new(t0);
        for e in events {
            if w.answers > 0 || w.ended {
                break;
            }
            let steps = w.happen(&mut r, e);
            w.run(&mut r, steps)?;
            prop_assert!(w.answers <= 1, "answered twice");
            if w.answers == 1 && !w.ended {
                prop_assert!(!w.held, "answered with the sources held");
            }
        }
        if w.ended {
            prop_assert_eq!(w.answers, 1, "the job ended without an answer");
            return Ok(());
        }
        w.calm(&mut r)?;
        prop_assert_eq!(w.answers, 1, "the rescale never finished");
        prop_assert!(!w.held, "the sources were left held");
    }
}
