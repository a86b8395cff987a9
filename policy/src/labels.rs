//! Measuring a bundle on a labelled request log (`signalbox eval --labels`): per label, how
//! many requests each decision got, and — counting `human` as the negative class and every
//! other label as a bot — the precision and recall of "not passed". A security engineer runs
//! it on a log before enforcing a bundle (shadow mode first: measure false positives).
//!
//! ```
//! use signalbox_policy::labels::LabelReport;
//! use signalbox_policy::Decision;
//!
//! let mut report = LabelReport::default();
//! report.add(Some("human"), Decision::Pass);
//! report.add(Some("crawler"), Decision::Block);
//! report.add(Some("crawler"), Decision::Pass);
//! assert_eq!(report.bot_detection().recall_percent(), Some(50.0));
//! assert!(report.render().contains("crawler"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::verdict::Decision;

/// The label of people; every other label is some kind of bot.
pub const HUMAN: &str = "human";

/// Decision counts per label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelReport {
    rows: BTreeMap<String, [usize; 4]>,
    unlabelled: usize,
}

/// "Not passed" as bot detection: humans are negatives, every other label positive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Detection {
    /// Bots not passed.
    pub true_positives: usize,
    /// Humans not passed.
    pub false_positives: usize,
    /// Bots passed.
    pub false_negatives: usize,
    /// Humans passed.
    pub true_negatives: usize,
}

fn percent(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

impl Detection {
    /// Of the requests not passed, the percentage that were bots.
    pub fn precision_percent(&self) -> Option<f64> {
        percent(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// Of the bots, the percentage not passed.
    pub fn recall_percent(&self) -> Option<f64> {
        percent(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Of the humans, the percentage passed.
    pub fn humans_passed_percent(&self) -> Option<f64> {
        percent(
            self.true_negatives,
            self.true_negatives + self.false_positives,
        )
    }
}

const DECISIONS: [Decision; 4] = [
    Decision::Pass,
    Decision::Challenge,
    Decision::Throttle,
    Decision::Block,
];

fn column(d: Decision) -> usize {
    match d {
        Decision::Pass => 0,
        Decision::Challenge => 1,
        Decision::Throttle => 2,
        Decision::Block => 3,
    }
}

impl LabelReport {
    /// Counts one request's decision (the intended one, in shadow mode too) under its label;
    /// `None` for a request the label file does not name.
    pub fn add(&mut self, label: Option<&str>, decision: Decision) {
        match label {
            Some(label) => {
                let row = self.rows.entry(label.to_owned()).or_default();
                if let Some(n) = row.get_mut(column(decision)) {
                    *n += 1;
                }
            }
            None => self.unlabelled += 1,
        }
    }

    /// The detection figures over every labelled request.
    pub fn bot_detection(&self) -> Detection {
        let mut d = Detection::default();
        for (label, row) in &self.rows {
            let passed = row.first().copied().unwrap_or(0);
            let not_passed: usize = row.iter().skip(1).sum();
            if label == HUMAN {
                d.true_negatives += passed;
                d.false_positives += not_passed;
            } else {
                d.false_negatives += passed;
                d.true_positives += not_passed;
            }
        }
        d
    }

    /// The table: one row per label with its decisions and the share not passed, then the
    /// detection figures.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self.rows.keys().map(String::len).max().unwrap_or(5).max(5);
        let _ = write!(out, "{:<width$} {:>7}", "label", "n");
        for d in DECISIONS {
            let _ = write!(out, " {:>9}", d.as_str());
        }
        let _ = writeln!(out, " {:>11}", "not passed");
        for (label, row) in &self.rows {
            let n: usize = row.iter().sum();
            let _ = write!(out, "{label:<width$} {n:>7}");
            for count in row {
                let _ = write!(out, " {count:>9}");
            }
            let not_passed: usize = row.iter().skip(1).sum();
            let share = percent(not_passed, n).unwrap_or(0.0);
            let _ = writeln!(out, " {share:>10.2}%");
        }
        let d = self.bot_detection();
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |p| format!("{p:.2}%"));
        let _ = writeln!(
            out,
            "humans passed {}; bots not passed (recall) {}; precision of not passing {}",
            show(d.humans_passed_percent()),
            show(d.recall_percent()),
            show(d.precision_percent())
        );
        if self.unlabelled > 0 {
            let _ = writeln!(out, "{} requests without a label", self.unlabelled);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_figures() {
        let mut r = LabelReport::default();
        for _ in 0..9 {
            r.add(Some(HUMAN), Decision::Pass);
        }
        r.add(Some(HUMAN), Decision::Challenge);
        r.add(Some("crawler"), Decision::Block);
        r.add(Some("crawler"), Decision::Throttle);
        r.add(Some("automation"), Decision::Pass);
        r.add(None, Decision::Block);
        let d = r.bot_detection();
        assert_eq!(
            d,
            Detection {
                true_positives: 2,
                false_positives: 1,
                false_negatives: 1,
                true_negatives: 9
            }
        );
        assert_eq!(d.humans_passed_percent(), Some(90.0));
        let text = r.render();
        assert!(text.contains("crawler"), "{text}");
        assert!(text.contains("100.00%"), "{text}");
        assert!(text.contains("1 requests without a label"), "{text}");
        assert!(text.contains("humans passed 90.00%"), "{text}");
        assert_eq!(
            LabelReport::default().bot_detection().recall_percent(),
            None
        );
    }
}
