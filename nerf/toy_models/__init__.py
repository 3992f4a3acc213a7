"""Small trained and random-weight models in the formats of real priors, made offline to test the method."""
