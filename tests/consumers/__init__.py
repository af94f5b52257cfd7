"""Tests of the consumers package: consumers, routing, middleware and the test communicators."""
