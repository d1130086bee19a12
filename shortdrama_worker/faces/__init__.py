"""Face detection backends and the drawing of face masks."""
