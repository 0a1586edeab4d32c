"""The controller loop and the Ray actors it drives; everything distributed lives here."""
