//! Figures printed as they are measured and appended to `BENCHMARKS.md`.

use std::io::Write;
use std::path::Path;

/// One run's report: markdown sections under a dated heading.
#[derive(Debug, Default)]
pub struct Report {
    sections: Vec<String>,
}

impl Report {
    /// Adds a section (a `### title` and a markdown body), printing it.
    pub fn section(&mut self, title: &str, body: String) {
        let text = format!("### {title}\n\n{body}\n");
        println!("{text}");
        self.sections.push(text);
    }

    /// Appends the run to `path` under a heading naming the date, the git
    /// revision, the machine and the mode.
    pub fn append(&self, path: &Path, mode: &str) -> anyhow::Result<()> {
        if self.sections.is_empty() {
            return Ok(());
        }
        let rev = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let dirty = std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .ok()
            .is_some_and(|o| !o.stdout.is_empty());
        let date = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC");
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(
            out,
            "\n## Run of {date}, revision {rev}{}, {mode}\n\nMachine: {}\n",
            if dirty { " (uncommitted changes)" } else { "" },
            super::proc::machine()
        )?;
        for s in &self.sections {
            writeln!(out, "{s}")?;
        }
        Ok(())
    }
}

/// A markdown table from a header row and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in rows {
        s.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    s
}

impl Report {
    /// Takes over the sections of another report.
    pub fn merge(&mut self, other: Report) {
        self.sections.extend(other.sections);
    }
}
