module nvi

go 1.26.8
