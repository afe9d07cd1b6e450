"""HTTP intake: the JSON API for apps and channel adapters, and the web form."""
