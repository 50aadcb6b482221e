"""What a scenario deploys: the planner, the edge's settings and the models' priors that every
runner gives its nodes (``runtime``)."""
