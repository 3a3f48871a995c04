"""Pinned upstream artifacts, fetched on demand and verified; none of their code is committed."""
