//! Sources and sinks for Sardonyx, with checkpointable positions.
