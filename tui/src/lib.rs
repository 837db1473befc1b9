//! The ratatui dashboard. Not built yet: see the README status table.
