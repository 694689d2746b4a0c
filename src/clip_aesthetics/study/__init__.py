"""The paper's study: reproduce, the prompt study, provenance of reusable artefacts, the study's report."""
