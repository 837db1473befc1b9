//! Gossip membership (chitchat). Not built yet: see the README status table.
