"""Results: run records and their metrics (``metrics``), the run's report and plots
(``runreport``) and the short tables on stderr (``report``)."""
