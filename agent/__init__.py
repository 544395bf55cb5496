"""agent: call sessions, audio frames, turn-taking, playout, transports' common side, CLI."""
