"""The Django Channels application of the ws4tx benchmark suite."""
