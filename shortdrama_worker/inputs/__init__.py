"""Input references: fetching and decoding them, and the address guard for URLs clients chose."""
