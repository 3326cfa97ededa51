"""Usage accounting: what each request used and cost, where it is kept, and budgets."""
