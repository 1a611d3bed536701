"""The bottom layer: settings, the clock, the database and its migrations, the chat-dataset format, and the
tables both faces of the system share. It imports no other tuneloop package."""
