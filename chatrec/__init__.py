"""chatrec: an open conversational recommender built on semantic-ID tokens."""

__version__ = "0.1.0"
