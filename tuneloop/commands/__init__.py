"""The sub-commands of `tuneloop`, one module per area. They are part of the composition root: they read the
settings, build the engine and the other objects, and hand them to the library packages."""
