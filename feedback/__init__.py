"""The interaction and feedback store, and curation of training data from it."""
