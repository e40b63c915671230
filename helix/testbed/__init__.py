"""Rehearse a multi-host deployment on one Linux box: emulated hosts in network namespaces (`netns`),
Ray nodes started inside them (`ray_nodes`), inter-region bandwidth from a cluster spec (`regions`)."""
