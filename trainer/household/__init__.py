"""A household's workflow: enrolment, its store, bundles and deployment."""
