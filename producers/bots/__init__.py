"""Chat bots: reporters on Telegram (Zalo and Messenger to follow) report by conversation."""
