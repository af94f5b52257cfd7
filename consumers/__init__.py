"""roomcast consumers: Channels-style consumers, routing and middleware. Built in a later issue."""
