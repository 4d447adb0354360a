"""One exception type for problems the user can fix; the CLI prints it as one line."""


class PipelineError(Exception):
    """A clear, user-facing error: bad config, missing input, missing model or package."""
