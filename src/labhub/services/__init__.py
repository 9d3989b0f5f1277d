"""Business logic.  Functions take keyword-only arguments and an AsyncSession;
they never import FastAPI and never make network calls inside a transaction."""
