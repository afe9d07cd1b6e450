"""Migration revisions (a package so that installs ship them)."""
