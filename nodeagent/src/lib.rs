//! The node agent that turns assigned VM state into running microVMs. Not built yet: see the README status table.
