"""Services that drive plugins outside the event path, and host services plugins call."""
