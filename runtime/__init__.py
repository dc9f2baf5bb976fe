"""The lean generation runtime (session, sampler, clip loop, video). Not built yet; it never
imports ``hallo2rt.export`` (DESIGN.md dependency direction)."""
