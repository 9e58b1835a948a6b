package notify

// Pages is how many pages of the log s has read: for tests that count the
// queries a reader makes.
func (s *Store) Pages() int64 { return s.pages.Load() }
