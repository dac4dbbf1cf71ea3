"""Worker processes: ``worker`` runs one member per group, ``supervisor`` runs N of them."""
