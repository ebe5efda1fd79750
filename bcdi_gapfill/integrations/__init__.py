"""Layer 6, ``integrations``: the fill as a stage of other tools. bcdi scripts (`bcdi`),
cdiutils' pipeline (`cdiutils`), PyNX operator chains (`pynx`) and Ewoks tasks (`ewoks`).
The tools themselves are imported lazily; none is needed to import this package."""
