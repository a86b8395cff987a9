//! Measuring a bundle on a labelled request log (`signalbox eval --labels`): per label, how
//! many requests each decision got, and — counting `human` as the negative class and every
//! other label as a bot — the precision and recall of "not passed"; then a confusion table of
//! labels against the client classes the engine concluded, with precision and recall per
//! class for labels that name one (`human` stands for `browser`). A security engineer runs it
//! on a log before enforcing a bundle (shadow mode first: measure false positives).
//!
//! ```
//! use signalbox_test_kit::labels::LabelReport;
//! use signalbox_policy::{ClientClass, Decision};
//!
//! let mut report = LabelReport::default();
//! report.add(Some("human"), Decision::Pass, ClientClass::Browser);
//! report.add(Some("crawler"), Decision::Block, ClientClass::DeclaredBot);
//! report.add(Some("crawler"), Decision::Pass, ClientClass::Browser);
//! assert_eq!(report.bot_detection().recall_percent(), Some(50.0));
//! assert!(report.render().contains("crawler"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use signalbox_policy::ClientClass;
use signalbox_policy::Decision;

/// Client classes in table order.
const CLASSES: [ClientClass; 6] = [
    ClientClass::Browser,
    ClientClass::VerifiedBot,
    ClientClass::DeclaredBot,
    ClientClass::Automation,
    ClientClass::SpoofedBot,
    ClientClass::Unknown,
];

fn class_column(c: ClientClass) -> usize {
    CLASSES
        .iter()
        .position(|x| *x == c)
        .unwrap_or(CLASSES.len() - 1)
}

/// The label of people; every other label is some kind of bot.
pub const HUMAN: &str = "human";

/// Decision counts per label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelReport {
    rows: BTreeMap<String, [usize; 4]>,
    classes: BTreeMap<String, [usize; 6]>,
    unlabelled: usize,
}

/// Precision and recall of one client class, for labels that name it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassFigures {
    /// The class.
    pub class: ClientClass,
    /// Requests labelled with it.
    pub labelled: usize,
    /// Requests the engine put in it.
    pub predicted: usize,
    /// Both.
    pub agreed: usize,
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
    pub fn add(&mut self, label: Option<&str>, decision: Decision, class: ClientClass) {
        match label {
            Some(label) => {
                let row = self.rows.entry(label.to_owned()).or_default();
                if let Some(n) = row.get_mut(column(decision)) {
                    *n += 1;
                }
                let row = self.classes.entry(label.to_owned()).or_default();
                if let Some(n) = row.get_mut(class_column(class)) {
                    *n += 1;
                }
            }
            None => self.unlabelled += 1,
        }
    }

    /// Precision and recall per client class, over labels that name a class (`human` counts
    /// as `browser`); classes no label names are left out.
    pub fn class_figures(&self) -> Vec<ClassFigures> {
        let class_of = |label: &str| -> Option<ClientClass> {
            if label == HUMAN {
                return Some(ClientClass::Browser);
            }
            CLASSES.iter().copied().find(|c| c.as_str() == label)
        };
        let mut out = Vec::new();
        for class in CLASSES {
            let col = class_column(class);
            let mut f = ClassFigures {
                class,
                labelled: 0,
                predicted: 0,
                agreed: 0,
            };
            for (label, row) in &self.classes {
                let in_col = row.get(col).copied().unwrap_or(0);
                f.predicted += in_col;
                if class_of(label) == Some(class) {
                    f.labelled += row.iter().sum::<usize>();
                    f.agreed += in_col;
                }
            }
            if f.labelled > 0 {
                out.push(f);
            }
        }
        out
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
        let _ = write!(out, "{:<width$} {:>7}", "label", "n");
        for c in CLASSES {
            let _ = write!(out, " {:>12}", c.as_str());
        }
        let _ = writeln!(out);
        for (label, row) in &self.classes {
            let n: usize = row.iter().sum();
            let _ = write!(out, "{label:<width$} {n:>7}");
            for count in row {
                let _ = write!(out, " {count:>12}");
            }
            let _ = writeln!(out);
        }
        for f in self.class_figures() {
            let _ = writeln!(
                out,
                "class {}: precision {} recall {} ({} labelled, {} concluded, {} both)",
                f.class.as_str(),
                show(percent(f.agreed, f.predicted)),
                show(percent(f.agreed, f.labelled)),
                f.labelled,
                f.predicted,
                f.agreed
            );
        }
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
            r.add(Some(HUMAN), Decision::Pass, ClientClass::Browser);
        }
        r.add(Some(HUMAN), Decision::Challenge, ClientClass::Unknown);
        r.add(Some("crawler"), Decision::Block, ClientClass::DeclaredBot);
        r.add(Some("crawler"), Decision::Throttle, ClientClass::SpoofedBot);
        r.add(Some("automation"), Decision::Pass, ClientClass::Browser);
        r.add(None, Decision::Block, ClientClass::Unknown);
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
        // Labels that name classes: human (browser) and automation.
        let figures = r.class_figures();
        let browser = figures
            .iter()
            .find(|f| f.class == ClientClass::Browser)
            .unwrap();
        assert_eq!(
            (browser.labelled, browser.predicted, browser.agreed),
            (10, 10, 9)
        );
        let automation = figures
            .iter()
            .find(|f| f.class == ClientClass::Automation)
            .unwrap();
        assert_eq!(
            (automation.labelled, automation.predicted, automation.agreed),
            (1, 0, 0)
        );
        assert!(
            !figures.iter().any(|f| f.class == ClientClass::DeclaredBot),
            "no label names declared_bot"
        );
        assert!(
            text.contains("class browser: precision 90.00% recall 90.00%"),
            "{text}"
        );
        assert_eq!(
            LabelReport::default().bot_detection().recall_percent(),
            None
        );
    }
}
