//! The EU AI Act Article 12 evidence report.
